"""Causal-LM loss fused with the LM head, computed in chunks of positions.

transformers' ``ForCausalLM`` loss builds the logits for every position (``[N, V]``), upcasts them
to fp32, keeps the log-softmax for backward and then builds a gradient of the same size: at 8K
positions and SmolLM2's 49K vocabulary that is several GB per sequence, and on a CPU most of the
step's memory traffic. Here the forward pass walks ``chunk`` positions at a time: logits, loss and
their gradient for that chunk, folded at once into the gradients of the hidden states and of the
LM-head weight. Only one chunk's logits ever exist; no matmul is recomputed (the same three
matmuls as the unfused loss). The loss is the same mean over target tokens (``-100`` ignored).

The loss runs inside the LM head's own call (:func:`fuse_head`: ``lm_head(hidden, targets,
chunk)``), never by reading its weight from outside: DeepSpeed ZeRO-3 partitions parameters and
gathers one only within its module's call, so the same code serves the torch engine and ZeRO-3.
"""

from __future__ import annotations

import torch


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        n = hidden.shape[0]
        valid_all = targets != -100
        count = valid_all.sum().clamp(min=1)
        w = weight.to(hidden.dtype)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, n, chunk):
            h, y, valid = hidden[s:s + chunk], targets[s:s + chunk], valid_all[s:s + chunk]
            logits = (h @ w.T).float()
            lse = torch.logsumexp(logits, dim=-1)
            rows = torch.arange(len(y), device=y.device)
            safe = y.clamp(min=0)
            total += ((lse - logits[rows, safe]) * valid).sum()
            # d(loss)/d(logits) = (softmax - onehot) / count, on target positions only
            probs = logits.sub_(lse[:, None]).exp_()
            probs[rows, safe] -= 1.0
            probs.mul_((valid / count)[:, None])
            g = probs.to(hidden.dtype)
            grad_hidden[s:s + chunk] = g @ w
            grad_weight += (g.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_out.to(grad_hidden.dtype), (grad_weight * grad_out).to(ctx.weight_dtype), None, None


def fuse_head(model: torch.nn.Module) -> None:
    """Give ``model.lm_head`` a second form: ``lm_head(hidden, targets, chunk)`` returns the chunked
    mean cross-entropy of ``hidden`` against ``targets`` (``-100`` ignored); ``lm_head(hidden)``
    is the plain projection as before (generation, evaluation)."""
    head = model.lm_head
    if getattr(head, "fused_loss", False):
        return
    project = head.forward

    def forward(hidden, targets=None, chunk: int = 1024):
        if targets is None:
            return project(hidden)
        return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), head.weight, targets.reshape(-1), chunk)

    head.forward = forward
    head.fused_loss = True


def causal_lm_loss(model: torch.nn.Module, input_ids, labels, position_ids=None, chunk: int = 1024,
                   attention_mask=None) -> torch.Tensor:
    """Mean next-token loss of a ``*ForCausalLM`` whose head :func:`fuse_head` fused: the decoder's
    hidden states, then the head's call with the labels shifted by one. ``attention_mask``: None, or
    a ready mask (flex_attention's BlockMask: engines.attention_mask) that transformers uses as given."""
    hidden = model.model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                         use_cache=False).last_hidden_state
    return model.lm_head(hidden[:, :-1], labels[:, 1:], chunk)


class ChunkedLossModel(torch.nn.Module):
    """Wraps a ``*ForCausalLM`` so that ``forward`` returns the fused loss (DDP-wrappable)."""

    def __init__(self, model: torch.nn.Module, chunk: int = 1024):
        super().__init__()
        fuse_head(model)
        self.model, self.chunk = model, chunk

    def forward(self, input_ids, labels, position_ids=None, attention_mask=None):
        return causal_lm_loss(self.model, input_ids, labels, position_ids, self.chunk, attention_mask)
