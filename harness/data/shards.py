"""Packed shards for training: what ``harness data build`` wrote, read back in a resumable order.

Every epoch visits the sequences in a permutation drawn from the run's seed; a *position* (the
number of sequences consumed so far) fully determines what comes next, so a resumed run sees
exactly the data an uninterrupted run would. With several processes, rank r of w takes every
w-th sequence of each global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from harness import rundir
from harness.errors import UserError


@dataclass
class Batch:
    input_ids: torch.Tensor      # [B, L]
    doc_lens: list[list[int]]    # per row, document pieces (sum to L)


class PackedShards:
    def __init__(self, path: Path, seq_len: int):
        path = Path(path)
        manifest = path / "manifest.json"
        if not manifest.is_file():
            raise UserError(f"--data: {str(path)!r} is not a data build (no manifest.json); "
                            f"make one with `harness data build`")
        self.manifest = rundir.read_json(manifest, "--data")
        try:
            built = int(self.manifest["seq_len"])
            names = [rundir.member(n, manifest) for n in self.manifest["shards"]]
            self.manifest["tokenizer"]["vocab_hash"]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"--data: {manifest} lacks seq_len, shards or tokenizer.vocab_hash; it is not a "
                            f"complete `harness data build` manifest (rebuild the data)") from None
        if seq_len > built:
            raise UserError(f"--seq-len: {seq_len} is above the shards' sequence length {built}; "
                            f"rebuild the data with --seq-len {seq_len} or train at <= {built}")
        self.path, self.seq_len = path, seq_len
        # Memory-mapped and read row by row: a multi-billion-token build is never held in memory.
        tables = [self._read(path / "shards" / name) for name in names]
        self.table = pa.concat_tables(tables) if tables else None
        if self.table is None or self.table.num_rows == 0:
            raise UserError(f"--data: {str(path)!r} holds no sequences")

    @staticmethod
    def _read(shard: Path) -> pa.Table:
        try:
            table = pq.read_table(shard, memory_map=True)
        except FileNotFoundError:
            raise UserError(f"--data: shard {shard} is missing; rebuild the data (`harness data build`)") from None
        except (pa.ArrowException, OSError) as exc:
            raise UserError(f"--data: shard {shard} is damaged ({str(exc).splitlines()[0][:160]}); rebuild the data") from None
        if not {"input_ids", "doc_lens"} <= set(table.column_names):
            raise UserError(f"--data: shard {shard} has no input_ids/doc_lens columns; not a packed shard")
        return table

    def __len__(self) -> int:
        return self.table.num_rows

    def row(self, i: int) -> tuple[list[int], list[int]]:
        return self.table.column("input_ids")[i].as_py(), self.table.column("doc_lens")[i].as_py()

    @property
    def vocab_hash(self) -> str:
        return self.manifest["tokenizer"]["vocab_hash"]

    def _crop(self, ids: list[int], lens: list[int]) -> tuple[list[int], list[int]]:
        """The first ``seq_len`` tokens of a longer packed sequence, with its document pieces cut to match."""
        if len(ids) == self.seq_len:
            return ids, lens
        out, left = [], self.seq_len
        for n in lens:
            if left <= 0:
                break
            out.append(min(n, left))
            left -= n
        return ids[:self.seq_len], out

    def index(self, position: int, seed: int) -> int:
        """Which sequence is the ``position``-th one consumed (epoch permutations from ``seed``)."""
        epoch, offset = divmod(position, len(self))
        order = np.random.default_rng([seed, epoch]).permutation(len(self))
        return int(order[offset])

    def batch(self, position: int, size: int, seed: int, rank: int = 0, world: int = 1) -> Batch:
        """This rank's micro-batch of ``size`` sequences starting at global ``position``.

        Global positions ``position .. position + size * world`` are dealt round-robin to ranks.
        """
        picks = [self.index(position + i * world + rank, seed) for i in range(size)]
        rows = [self._crop(*self.row(i)) for i in picks]
        return Batch(torch.tensor([r[0] for r in rows], dtype=torch.long), [r[1] for r in rows])


def position_ids(doc_lens: list[list[int]]) -> torch.Tensor:
    """Per-document positions (0..n-1 for each piece): with ``use_cache=False`` transformers then
    masks attention to within each document (sdpa/eager on CPU, varlen FlashAttention-2 on CUDA)."""
    return torch.tensor([[p for n in lens for p in range(n)] for lens in doc_lens], dtype=torch.long)


def labels(batch: Batch, doc_mask: bool) -> torch.Tensor:
    """Next-token labels (transformers shifts them). Under document masking a document's first token
    cannot be predicted from the previous document, so it is ignored (-100)."""
    out = batch.input_ids.clone()
    if doc_mask:
        for row, lens in enumerate(batch.doc_lens):
            starts = np.cumsum([0, *lens[:-1]])
            out[row, starts[1:]] = -100
    return out


def one_row(input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor):
    """A micro-batch of packed rows as one row of B x T tokens, for a kernel that finds documents
    from ``position_ids`` only in a batch of one (transformers' varlen FlashAttention-2 path; with
    more rows it would attend across documents). Exact: every row starts a document (its positions
    restart at 0), and a row's first token, never a target within its row, is kept from becoming
    the target of the previous row's last token."""
    labels = labels.clone()
    labels[:, 0] = -100
    return input_ids.reshape(1, -1), labels.reshape(1, -1), position_ids.reshape(1, -1)
