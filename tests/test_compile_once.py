"""Document-masked training with flex_attention compiles once per shape, whatever the documents' layout.

On one H200 the first doc-masked step took 182 s (flex_attention's compilation) and the first at a
second length 13.8 s. transformers builds the block mask with a compiled ``create_block_mask`` (a
graph of its own) and, when no row of a batch holds a second document, with another ``mask_mod``
(plain causal), which recompiles both that graph and flex_attention: 4 graphs per shape, measured
here with the same layouts through transformers' own mask. The engines now build the BlockMask from
tensors (``engines.document_block_mask``): one graph per shape, flex_attention's.

What this covers on CPU: flex_attention has no backward on CPU, so the count is of the training
forward (the engine's ``loss``: the model in train mode, the chunked loss, the mask the engines pass)
under no_grad. On CUDA the same call also compiles the backward kernel inside the same graph
(AOTAutograd's joint graph), so the count is the GPU's; the GPU check records it there.
"""

import pytest
import torch

from harness import models
from harness.data import shards as shard_io
from harness.trainer import engines


def _layouts(length: int) -> list[list[list[int]]]:
    """Two-row micro-batches of one length: documents cut anywhere, and rows of a single document
    (the layout that made transformers' mask another function)."""
    third = length // 3
    return [[[length // 2, length - length // 2], [length]], [[length], [length]],
            [[third, third, length - 2 * third], [10, length - 10]], [[1, length - 1], [length // 4] * 4]]


def _engine(model):
    return engines.TorchEngine(model, lr=1e-3, weight_decay=0.0, warmup=1, accum=1, clip=1.0, dtype=torch.float32,
                               device=torch.device("cpu"), world=1, loss_chunk=64)


def _batch(lens: list[list[int]], seed: int):
    gen = torch.Generator().manual_seed(seed)
    batch = shard_io.Batch(torch.randint(100, 40000, (len(lens), sum(lens[0])), generator=gen), lens)
    return batch.input_ids, shard_io.labels(batch, doc_mask=True), shard_io.position_ids(lens)


@pytest.mark.parametrize("length", [200, 384])
def test_document_block_mask_is_transformers_mask(length):
    """The same blocks, full blocks and elements as create_block_mask over transformers' mask_mod
    (causal, same packed sequence), lengths of whole and partial blocks."""
    from torch.nn.attention.flex_attention import create_block_mask

    for lens in _layouts(length) + [[[129, length - 129], [5, 7, length - 12]]]:
        pos = shard_io.position_ids(lens)
        doc = (torch.diff(pos, dim=-1, prepend=pos[:, :1] - 1) != 1).cumsum(-1)
        ref = create_block_mask(lambda b, h, q, kv: (q >= kv) & (doc[b, q] == doc[b, kv]), len(lens), 1, length, length)
        ours = engines.document_block_mask(pos)
        assert torch.equal(ours.to_dense(), ref.to_dense()), lens
        for name in ("kv_num_blocks", "full_kv_num_blocks", "q_num_blocks", "full_q_num_blocks"):
            assert torch.equal(getattr(ours, name), getattr(ref, name)), (lens, name)
        q, kv = torch.meshgrid(torch.arange(length), torch.arange(length), indexing="ij")
        for b in range(len(lens)):
            assert torch.equal(ours.mask_mod(b, 0, q, kv), ref.mask_mod(b, 0, q, kv)), (lens, b)


def test_flex_training_forward_compiles_once_per_shape(tiny_model_dir):
    """Four layouts at 128 tokens, then four at 256: one dynamo graph each length (flex_attention),
    none for the mask, and the losses those of sdpa's dense per-document mask (the unchanged loss)."""
    from torch._dynamo.utils import counters

    flex = _engine(models.load(str(tiny_model_dir), dtype="fp32", attn="flex_attention").model)
    sdpa = _engine(models.load(str(tiny_model_dir), dtype="fp32", attn="sdpa").model)
    flex.model.train()
    sdpa.model.train()
    torch._dynamo.reset()
    counters.clear()
    graphs = []
    for length in (128, 256):
        for seed, lens in enumerate(_layouts(length)):
            ids, labels, pos = _batch(lens, seed)
            with torch.no_grad():
                got, want = flex.loss(ids, labels, pos), sdpa.loss(ids, labels, pos)
            assert torch.allclose(got, want, atol=1e-5), (lens, float(got), float(want))
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs == [1, 2], f"dynamo graphs after each length: {graphs} (want one per shape)"
