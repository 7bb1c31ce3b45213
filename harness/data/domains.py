"""The seven domains of the paper's data mixture (SlimPajama's sets): the vocabulary that readers
(corpus.py), the embedded corpus's builder (embedded.py), mixtures and packing share. It sits below
them all so that none needs another only for this list."""

DOMAINS = ("commoncrawl", "c4", "github", "book", "arxiv", "wikipedia", "stackexchange")
