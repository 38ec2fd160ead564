"""Dropout on an LSTM's recurrence, for FusedLSTM in training mode.

    weight_dropout p       DropConnect on W_hh (AWD-LSTM's weight drop):
                           W_hh [4H, P] -> W_hh * M, M ~ Bernoulli(1 - p) / (1 - p),
                           one mask per forward call, shared by all steps, applied
                           before the recurrence, so every backend runs the masked
                           weight as an ordinary input. The product is
                           differentiable: the parameter itself gets the gradient
                           (times M), and stays what state_dict() holds.
    variational_dropout q  locked dropout on a layer's input x [T, B, I]:
                           x[t, b] -> x[t, b] * m[b], m [B, I] ~ Bernoulli(1 - q) / (1 - q),
                           one mask per sequence, the same at every time step.

Masks come from the default generator of the tensors' device (see keep_mask), in this order:
for each layer, the layer input's mask (when q > 0), then for each direction
that layer's W_hh mask (when p > 0).
"""

from __future__ import annotations

import torch
from torch import Tensor


def keep_mask(shape, p: float, like: Tensor) -> Tensor:
    """A dropout mask of `shape` in `like`'s dtype and device: 1 / (1 - p) with
    probability 1 - p, else 0 (all 0 when p = 1).

    Drawn as u < 1 - p for u uniform in [0, 1), in float32 at least (so a half
    type's rounding does not shift the probability): on the CPU this is 4x faster
    than bernoulli_ (a 1024 x 256 W_hh mask, float32, 2 threads, AMD EPYC: 0.78
    against 3.07 ms; one per layer, those were 6 % of a 2x256 char-model step)."""
    keep = 1.0 - p
    uniform = torch.empty(shape, dtype=torch.promote_types(like.dtype, torch.float32), device=like.device)
    mask = uniform.uniform_().lt_(keep).to(like.dtype)
    return mask.div_(keep) if keep > 0 else mask


def drop_connect(weight: Tensor, p: float) -> Tensor:
    """`weight` times a fresh mask of its own shape (`weight` itself when p = 0)."""
    return weight * keep_mask(weight.shape, p, weight) if p else weight


def packed_sequence_index(batch_sizes: Tensor, device) -> Tensor:
    """[N] int64: the sequence (batch row) of each row of packed data, whose step t
    holds sequences 0 .. batch_sizes[t] - 1 (batch_sizes is non-increasing)."""
    rows = torch.arange(int(batch_sizes[0]))
    return rows.expand(len(batch_sizes), -1)[rows < batch_sizes.unsqueeze(1)].to(device)


def locked_dropout(x: Tensor, p: float, batch_sizes: Tensor | None = None) -> Tensor:
    """x [T, B, I] (or packed [N, I] with batch_sizes [T]) times one mask [B, I]
    per call: the same for every step of a sequence (`x` itself when p = 0)."""
    if not p:
        return x
    if batch_sizes is None:
        return x * keep_mask(x.shape[1:], p, x)  # broadcast over the steps
    mask = keep_mask((int(batch_sizes[0]), x.size(-1)), p, x)
    return x * mask[packed_sequence_index(batch_sizes, x.device)]
