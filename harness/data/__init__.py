"""Data engineering (the paper's section 3): corpus sources and readers, the embedded seven-domain
corpus, the five mixture strategies, statistics, and packing into shards (written by ``packing``,
read by ``shards``). Used by the trainer (shards), the loss and BookQA suites (held-out and book
documents) and ``harness data``; it imports neither of them.
"""
