"""Causal-LM loss fused with the LM head, computed in chunks of positions.

transformers' ``ForCausalLM`` loss builds the logits for every position (``[N, V]``), upcasts them
to fp32, keeps the log-softmax for backward and then builds a gradient of the same size: at 8K
positions and SmolLM2's 49K vocabulary that is several GB per sequence, and on a CPU most of the
step's memory traffic. Here the forward pass walks ``chunk`` positions at a time: logits, loss and
their gradient for that chunk, folded at once into the gradients of the hidden states and of the
LM-head weight. Only one chunk's logits ever exist; no matmul is recomputed (the same three
matmuls as the unfused loss). The loss is the same mean over target tokens (``-100`` ignored).
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


def chunked_causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                           chunk: int = 1024) -> torch.Tensor:
    """Mean next-token cross-entropy of ``hidden @ weight.T`` against ``labels`` shifted by one."""
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = labels[:, 1:].reshape(-1)
    return _LinearCrossEntropy.apply(h, weight, y, chunk)


class ChunkedLossModel(torch.nn.Module):
    """Wraps a ``*ForCausalLM`` so that ``forward`` returns the fused loss (DDP-wrappable)."""

    def __init__(self, model: torch.nn.Module, chunk: int = 1024):
        super().__init__()
        self.model, self.chunk = model, chunk

    def forward(self, input_ids, labels, position_ids=None):
        hidden = self.model.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        return chunked_causal_lm_loss(hidden, self.model.lm_head.weight, labels, self.chunk)
