"""The op contract in plain PyTorch: the oracle that every backend is tested against.

Written for clarity, not speed. The forward functions are differentiable by
PyTorch's autograd (the "reference" backend uses them); the explicit backward
functions state the gradients that the fused kernels compute, and are
themselves checked against autograd in the tests.

Shapes: B batch, H hidden size, P output size (proj_size or H), T steps. A
layer's per-step tensors are dense, [T, B, *], or packed, [N, *] with
N = sum(batch_sizes) and the rows of each step contiguous (PackedSequence's
layout); step t involves only the first batch_sizes[t] sequences.

As in every backend, float16 and bfloat16 data is computed in float32 and
the results rounded back, and the arguments are checked first, by
fusedlstm.checks (the C++ ops' rules and messages).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from . import checks

_REDUCED = (torch.float16, torch.bfloat16)


def _in_float32(fn):
    """Run fn with float16/bfloat16 tensor arguments upcast to float32 and
    its floating results rounded back to the arguments' dtype."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        dtype = next(a.dtype for a in args if isinstance(a, Tensor) and a.is_floating_point())
        if dtype not in _REDUCED:
            return fn(*args, **kwargs)
        up = [a.float() if isinstance(a, Tensor) and a.dtype == dtype else a for a in args]
        return tuple(r.to(dtype) if r.is_floating_point() else r for r in fn(*up, **kwargs))

    return wrapper


def _checked_by(check):
    """Run check(*args, **kwargs) (it raises on bad arguments), then fn."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            check(*args, **kwargs)
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def _check_layer_fwd_args(x_proj, w_hh, h0, c0, w_hr=None, batch_sizes=None, reverse=False,
                          save_for_backward=True):
    checks.check_layer_args(x_proj, w_hh, h0, c0, w_hr, batch_sizes)


def _check_layer_bwd_args(grad_output, grad_h_n, grad_c_n, w_hh, h0, c0, w_hr, batch_sizes, reverse,
                          output, acts, cells, h_raw):
    checks.check_layer_bwd_args(grad_output, grad_h_n, grad_c_n, w_hh, h0, c0, w_hr, batch_sizes,
                                output, acts, cells, h_raw)


@_checked_by(checks.check_cell_fwd_args)
@_in_float32
def lstm_cell_fwd(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """gates: [B, 4H] pre-activations (order i, f, g, o), c_prev: [B, H]
    -> h [B, H], c [B, H], act [B, 4H] post-activation gates."""
    pi, pf, pg, po = gates.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(pi), torch.sigmoid(pf), torch.tanh(pg), torch.sigmoid(po)
    c = f * c_prev + i * g
    h = o * torch.tanh(c)
    return h, c, torch.cat([i, f, g, o], dim=1)


@_checked_by(checks.check_cell_bwd_args)
@_in_float32
def lstm_cell_bwd(grad_h: Tensor, grad_c: Tensor, act: Tensor, c_prev: Tensor,
                  c: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of lstm_cell_fwd: -> grad_gates [B, 4H], grad_c_prev [B, H]."""
    i, f, g, o = act.chunk(4, dim=1)
    tc = torch.tanh(c)
    dc = grad_c + grad_h * o * (1 - tc * tc)
    grad_gates = torch.cat([
        dc * g * i * (1 - i),
        dc * c_prev * f * (1 - f),
        dc * i * (1 - g * g),
        grad_h * tc * o * (1 - o),
    ], dim=1)
    return grad_gates, dc * f


class _Steps:
    """Rows of each step of a dense or packed layer input."""

    def __init__(self, x_proj: Tensor, batch_sizes: Tensor | None, reverse: bool):
        if batch_sizes is None:
            self.T, B = x_proj.shape[0], x_proj.shape[1]
            self.sizes = [B] * self.T
        else:
            self.sizes = [int(n) for n in batch_sizes.tolist()]
            self.T = len(self.sizes)
        self.packed = batch_sizes is not None
        self.offsets = [sum(self.sizes[:t]) for t in range(self.T)]
        self.order = list(range(self.T))[::-1] if reverse else list(range(self.T))

    def rows(self, tensor: Tensor, t: int) -> Tensor:
        if self.packed:
            return tensor[self.offsets[t]:self.offsets[t] + self.sizes[t]]
        return tensor[t]

    def join(self, per_step: list[Tensor]) -> Tensor:
        return torch.cat(per_step) if self.packed else torch.stack(per_step)

    def previous(self, k: int) -> tuple[int | None, int]:
        """(step processed before order[k], rows continuing from it)."""
        if k == 0:
            return None, 0
        prev = self.order[k - 1]
        return prev, min(self.sizes[prev], self.sizes[self.order[k]])


@_checked_by(_check_layer_fwd_args)
@_in_float32
def lstm_layer_fwd(x_proj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, w_hr: Tensor | None = None,
                   batch_sizes: Tensor | None = None, reverse: bool = False,
                   save_for_backward: bool = True):
    """One layer and direction.

    x_proj: [T, B, 4H] or packed [N, 4H] (x W_ih^T + b_ih + b_hh); w_hh: [4H, P];
    h0: [B, P]; c0: [B, H]; w_hr: [P, H] or None; batch_sizes: [T] int64 or None.
    -> output [T, B, P] / [N, P], h_n [B, P], c_n [B, H], acts [.., 4H],
    cells [.., H] and h_raw [.., H] (o * tanh(c), the projection's input; empty
    without w_hr); the last three are empty when save_for_backward is False.
    """
    steps = _Steps(x_proj, batch_sizes, reverse)
    h, c = h0, c0
    outs, acts, cells, raws = [None] * steps.T, [None] * steps.T, [None] * steps.T, [None] * steps.T
    for t in steps.order:
        n = steps.sizes[t]
        gates = steps.rows(x_proj, t) + h[:n] @ w_hh.t()
        h_t, c_t, act_t = lstm_cell_fwd(gates, c[:n])
        raws[t] = h_t
        if w_hr is not None:
            h_t = h_t @ w_hr.t()
        h, c = torch.cat([h_t, h[n:]]), torch.cat([c_t, c[n:]])
        outs[t], acts[t], cells[t] = h_t, act_t, c_t
    empty = x_proj.new_empty(0)
    return (steps.join(outs), h, c,
            steps.join(acts) if save_for_backward else empty,
            steps.join(cells) if save_for_backward else empty,
            steps.join(raws) if save_for_backward and w_hr is not None else empty)


@_checked_by(_check_layer_bwd_args)
@_in_float32
def lstm_layer_bwd(grad_output: Tensor | None, grad_h_n: Tensor | None, grad_c_n: Tensor | None,
                   w_hh: Tensor, h0: Tensor, c0: Tensor, w_hr: Tensor | None,
                   batch_sizes: Tensor | None, reverse: bool, output: Tensor, acts: Tensor,
                   cells: Tensor, h_raw: Tensor):
    """Gradients of lstm_layer_fwd (None grads are zero)
    -> grad_x_proj, grad_w_hh, grad_h0, grad_c0, grad_w_hr (empty without w_hr)."""
    steps = _Steps(acts, batch_sizes, reverse)
    dh = grad_h_n if grad_h_n is not None else torch.zeros_like(h0)
    dc = grad_c_n if grad_c_n is not None else torch.zeros_like(c0)
    grad_x = [None] * steps.T
    grad_w_hh = torch.zeros_like(w_hh)
    grad_w_hr = torch.zeros_like(w_hr) if w_hr is not None else None
    for k in reversed(range(steps.T)):
        t = steps.order[k]
        n = steps.sizes[t]
        prev, m = steps.previous(k)
        h_prev = h0[:n] if prev is None else torch.cat([steps.rows(output, prev)[:m], h0[m:n]])
        c_prev = c0[:n] if prev is None else torch.cat([steps.rows(cells, prev)[:m], c0[m:n]])
        act_t, c_t = steps.rows(acts, t), steps.rows(cells, t)
        dh_out = dh[:n] if grad_output is None else dh[:n] + steps.rows(grad_output, t)
        if w_hr is not None:
            grad_w_hr = grad_w_hr + dh_out.t() @ steps.rows(h_raw, t)
            dh_cell = dh_out @ w_hr
        else:
            dh_cell = dh_out
        d_gates, dc_prev = lstm_cell_bwd(dh_cell, dc[:n], act_t, c_prev, c_t)
        grad_w_hh = grad_w_hh + d_gates.t() @ h_prev
        dh = torch.cat([d_gates @ w_hh, dh[n:]])
        dc = torch.cat([dc_prev, dc[n:]])
        grad_x[t] = d_gates
    return (steps.join(grad_x), grad_w_hh, dh, dc,
            grad_w_hr if grad_w_hr is not None else acts.new_empty(0))


def lstm_cell(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """Differentiable cell step: -> h, c."""
    h, c, _ = lstm_cell_fwd(gates, c_prev)
    return h, c


def lstm_layer(x_proj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, w_hr: Tensor | None = None,
               batch_sizes: Tensor | None = None, reverse: bool = False):
    """Differentiable layer: -> output, h_n, c_n."""
    output, h_n, c_n, *_ = lstm_layer_fwd(x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse,
                                          save_for_backward=False)
    return output, h_n, c_n
