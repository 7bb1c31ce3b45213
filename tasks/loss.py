"""Loss by length: per-domain teacher-forced loss on held-out long documents, bucketed by position.

A cell is one held-out document, cut to the run's maximum length. Its result holds the mean
loss and the token count of every position bucket (0-4K, 4K-8K, ...); the suite's summary is the
token-weighted mean per domain and bucket. This is the paper's per-length validation loss
(Table 5); as its Figure 4 shows, it can stay flat while retrieval fails, so read it beside the
needle grid, never instead of it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from harness import rundir, uncertainty
from harness.errors import UserError
from harness.tasks import base
from harness.values import format_length, parse_length

log = logging.getLogger(__name__)
SPEC_PATH = Path(__file__).with_name("loss.yaml")
NAME = "loss"


@dataclass(frozen=True)
class Cell:
    suite: str
    key: str
    length: int      # tokens fed (the document cut to max_length)
    domain: str
    doc_id: str


@dataclass(frozen=True)
class LossConfig:
    bucket: int
    max_length: int
    corpus: str
    documents: tuple[tuple[str, str], ...]  # (id, domain), in corpus order
    max_new_tokens: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["documents"] = [list(x) for x in self.documents]
        return d


def bucket_name(start: int, width: int) -> str:
    return f"{format_length(start) if start else '0'}-{format_length(start + width)}"


def resolve_config(*, max_length: int, bucket: int | None = None, length: int | None = None,
                   spec: dict | None = None) -> tuple[LossConfig, dict]:
    """The loss suite's config for a model that handles ``max_length`` positions, and the texts.

    Each document is cut to ``length`` (``--loss-length``), else the YAML's ``max_length``, else the
    model's positions."""
    from harness.data import embedded

    spec = spec or yaml.safe_load(SPEC_PATH.read_text())
    width = int(bucket or spec["bucket"])
    if width < 1:
        raise UserError(f"--loss-bucket: {width} must be positive")
    length = int(length or spec["max_length"] or max_length)
    corpus_dir = embedded.build()
    held_out = rundir.read_json(corpus_dir / "manifest.json", "loss").get("held_out", [])
    docs = {i: (d["domain"], d["text"]) for i, d in embedded.read_documents(corpus_dir, held_out).items()}
    if not docs:
        raise UserError(f"suite loss: the corpus at {corpus_dir} lists no held-out documents")
    ordered = tuple((doc_id, docs[doc_id][0]) for doc_id in sorted(docs, key=lambda i: (docs[i][0], i)))
    cfg = LossConfig(bucket=width, max_length=length, corpus=str(corpus_dir), documents=ordered)
    return cfg, {doc_id: text for doc_id, (_, text) in docs.items()}


@dataclass(frozen=True)
class Options:
    loss_bucket: str | None = base.option("--loss-bucket", "Loss suite: tokens per position bucket (default 4k).")
    loss_length: str | None = base.option("--loss-length", "Loss suite: tokens per document (default: the "
                                          "model's max positions).")

    def __post_init__(self):
        """The lengths, checked when the options are made: before another suite's preparation
        (BookQA's builds the corpus) can run first."""
        self.lengths()

    def lengths(self) -> dict:
        """{"bucket", "length"}: the flags' token counts (None: not given)."""
        return {"bucket": parse_length(self.loss_bucket, "--loss-bucket") if self.loss_bucket else None,
                "length": parse_length(self.loss_length, "--loss-length") if self.loss_length else None}


class LossSuite(base.Suite):
    name = NAME
    Options = Options
    backends = ("hf", "vllm")   # per-token log-probabilities of whole documents from the model itself
    figures = ("loss_curves",)
    report_pages = ("loss_curves",)

    @staticmethod
    def paired_units(results: list[dict], manifest: dict) -> dict:
        """Per bucket, each document's loss there (compared paired by document; the report's column
        is the mean over domains, the comparison the mean over documents)."""
        out: dict[str, dict] = {}
        for r in (r for r in results if r.get("suite") == NAME):
            for bucket, b in r["buckets"].items():
                out.setdefault(f"loss {bucket}", {})[r["doc_id"]] = (b["loss"], r["doc_id"])
        return out

    @staticmethod
    def lower_is_better(column: str) -> bool:
        return column.startswith("loss ")

    @classmethod
    def cost(cls, prepared: dict) -> base.Cost:
        # Its documents are cut to the model's positions (known at bind): timed whole instead.
        return base.Cost(named_rate="loss_s")

    @classmethod
    def lm_eval_place(cls, row: base.Row, manifest: dict) -> tuple[str, str]:
        """``harness_loss`` (the mean over domains) and ``harness_loss_<domain>``, one metric per
        position bucket keyed by its last position ("1024")."""
        scope, _, bucket = row.slice.rpartition(" ")
        end = base.length_key(bucket.split("-")[-1]) or base.metric_name(bucket)
        return ("harness_loss" if scope.startswith("mean of") else f"harness_loss_{base.metric_name(scope)}"), end

    @classmethod
    def prepare(cls, grid: base.Grid, options: Options) -> dict:
        """The flags' lengths (checked when the options were made; the documents are cut to the
        model's positions, known at bind)."""
        return options.lengths()

    @classmethod
    def bind(cls, prepared: dict, loaded) -> "LossSuite":
        config, texts = resolve_config(max_length=loaded.max_positions, **prepared)
        return cls(config, texts, loaded.tokenizer)

    @staticmethod
    def summary(results: list[dict], manifest: dict) -> list[base.Row]:
        """Per domain and bucket: the token-weighted mean over documents (the documents are the units
        of its interval); per bucket, the mean over domains (independent strata; the training seeds of
        a pooled ablation model add their spread: harness.uncertainty.stratified)."""
        docs = [r for r in results if r.get("suite") == NAME]
        rows, by_bucket = [], {}
        for domain, buckets in summary(results).items():
            for bucket in buckets:
                mine = [r for r in docs if r["domain"] == domain and bucket in r["buckets"]]
                values = dict(weights=[r["buckets"][bucket]["tokens"] for r in mine],
                              clusters=[r["doc_id"] for r in mine])
                losses = [r["buckets"][bucket]["loss"] for r in mine]
                est = uncertainty.estimate(losses, replicates=base.replicates(mine), **values)
                rows.append(base.Row.of(NAME, f"{domain} {bucket}", "nats/token", est, how="over documents"))
                by_bucket.setdefault(bucket, []).append(uncertainty.estimate(losses, **values))
        per_replicate: dict[str, dict] = {}
        seeds = list(dict.fromkeys(base.replicates(docs)))
        for rep in seeds if len(seeds) > 1 else []:
            for domain, buckets in summary([r for r in docs if r.get("replicate") == rep]).items():
                for bucket, v in buckets.items():
                    per_replicate.setdefault(bucket, {}).setdefault(rep, []).append(v["loss"])
        # The report's columns: the mean over domains per bucket (per domain: the loss curves page).
        for bucket, ests in by_bucket.items():
            means = [sum(v) / len(v) for v in per_replicate.get(bucket, {}).values() if len(v) == len(ests)]
            est = uncertainty.stratified(ests, means)
            rows.append(base.Row.of(NAME, f"mean of {len(ests)} domains {bucket}", "nats/token", est,
                                    column=f"loss {bucket}", how="domains independent"))
        return rows

    def __init__(self, config: LossConfig, texts: dict[str, str], tokenizer):
        self.config, self.tok = config, tokenizer
        self.ids = {doc_id: first_tokens(tokenizer, texts[doc_id], config.max_length) for doc_id, _ in config.documents}
        longest = max(len(v) for v in self.ids.values())
        for start in range(0, config.max_length, config.bucket):
            if start >= longest:
                log.warning("loss bucket %s is beyond every held-out document (the longest has %s tokens): skipped",
                            bucket_name(start, config.bucket), f"{longest:,}")
                break

    def cells(self) -> list[Cell]:
        return [Cell(NAME, f"{NAME}/{doc_id}", len(self.ids[doc_id]), domain, doc_id)
                for doc_id, domain in self.config.documents]

    def evaluate(self, cell: Cell, backend) -> dict:
        started = time.perf_counter()
        nll = backend.token_nll(self.ids[cell.doc_id])  # position p predicts token p + 1
        width = self.config.bucket
        buckets = {}
        for start in range(0, len(nll), width):
            part = nll[start:start + width]
            buckets[bucket_name(start, width)] = {"loss": float(part.mean()), "tokens": int(len(part))}
        mean = float(nll.mean())
        return {"suite": NAME, "key": cell.key, "length": cell.length, "tokens": int(len(nll)),
                "domain": cell.domain, "doc_id": cell.doc_id, "score": mean,
                "scores": {"loss": mean, **{f"loss_{k}": v["loss"] for k, v in buckets.items()}},
                "buckets": buckets, "seconds": round(time.perf_counter() - started, 3)}


def first_tokens(tokenizer, text: str, n: int, margin: int = 64) -> list[int]:
    """The first ``n`` tokens of ``text``, as tokenizing all of it gives them, from a prefix of the
    text: the pre-tokenizer splits text into words before BPE merges, so cutting the text changes
    only the last few tokens; the prefix grows until it yields ``margin`` tokens past ``n``. (A
    held-out book is 100x longer than the 512 tokens a CPU test keeps.)"""
    chars = 8 * (n + margin)
    while chars < len(text):
        ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
        if len(ids) >= n + margin:
            return ids[:n]
        chars *= 2
    return tokenizer(text, add_special_tokens=False)["input_ids"][:n]


def summary(results: list[dict]) -> dict[str, dict[str, dict]]:
    """domain -> bucket -> {loss (token-weighted mean), tokens, documents}."""
    out: dict[str, dict[str, dict]] = {}
    for r in results:
        if r.get("suite") != NAME:
            continue
        for name, b in r["buckets"].items():
            cell = out.setdefault(r["domain"], {}).setdefault(name, {"sum": 0.0, "tokens": 0, "documents": 0})
            cell["sum"] += b["loss"] * b["tokens"]
            cell["tokens"] += b["tokens"]
            cell["documents"] += 1
    return {d: {b: {"loss": v["sum"] / v["tokens"], "tokens": v["tokens"], "documents": v["documents"]}
                for b, v in sorted(bs.items(), key=lambda kv: _bucket_start(kv[0]))}
            for d, bs in sorted(out.items())}


def _bucket_start(name: str) -> int:
    from harness.values import parse_length

    head = name.split("-")[0]
    return 0 if head == "0" else parse_length(head)
