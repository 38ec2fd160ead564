"""The op contract in plain PyTorch: the oracle that every backend is tested against.

Written for clarity, not speed. The forward functions are differentiable by
PyTorch's autograd (the "reference" backend uses them); the explicit backward
functions state the gradients that the fused kernels compute, and are
themselves checked against autograd in the tests.

Shapes: B batch, H hidden size, P output size (proj_size or H), T steps. A
layer's per-step tensors are dense, [T, B, *], or packed, [N, *] with
N = sum(batch_sizes) and the rows of each step contiguous (PackedSequence's
layout); step t involves only the first batch_sizes[t] sequences. The layer
functions walk the steps by the layer's plan (fusedlstm.plan), as every
backend does.

As in every backend, float16 and bfloat16 data is computed in float32 and
the results rounded back, and the arguments are checked first, by
fusedlstm.checks (the C++ ops' rules and messages).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from . import checks, plan

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
    """A layer's per-step tensors ([T, B, W] dense or [N, W] packed) viewed as
    [rows, W] (`flat`) and walked in the order of the layer's plan
    (fusedlstm.plan): entry k's rows are [offset, offset + rows)."""

    def __init__(self, per_step: Tensor, batch_sizes: Tensor | None, reverse: bool, B: int):
        self.dense = batch_sizes is None
        self.T = per_step.shape[0] if self.dense else batch_sizes.shape[0]
        self.B = B
        self.plan = plan.entries(batch_sizes, self.T, B, reverse)

    @staticmethod
    def flat(tensor: Tensor) -> Tensor:
        return tensor.reshape(-1, tensor.shape[-1])

    @staticmethod
    def rows(flat: Tensor, s: plan.StepPlan) -> Tensor:
        """Entry s's rows of a flat per-step tensor."""
        return flat[s.offset:s.offset + s.rows]

    @staticmethod
    def previous(flat: Tensor, s: plan.StepPlan, initial: Tensor) -> Tensor:
        """What entry s starts from: rows b < s.continuing of the entry
        processed before it (in a flat per-step tensor), initial[b] ([B, W])
        for the others."""
        carried = flat[s.prev_offset:s.prev_offset + s.continuing]
        return torch.cat([carried, initial[s.continuing:s.rows]])

    def join(self, per_entry: list[Tensor]) -> Tensor:
        """Entry k's rows, at [k] -> a per-step tensor."""
        in_row_order = [per_entry[k] for k in sorted(range(self.T), key=lambda k: self.plan[k].offset)]
        joined = torch.cat(in_row_order)
        return joined.view(self.T, self.B, joined.shape[-1]) if self.dense else joined


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
    steps = _Steps(x_proj, batch_sizes, reverse, h0.shape[0])
    # The latest state of each sequence (row b: sequence b). Entry s's rows
    # b < s.rows take part: h[:n] and c[:n] hold the previous entry's values
    # for b < s.continuing and, untouched so far, h0 and c0 for the others.
    h, c = h0, c0
    x_rows = steps.flat(x_proj)
    outs, acts, cells, raws = [], [], [], []
    for s in steps.plan:
        n = s.rows
        gates = steps.rows(x_rows, s) + h[:n] @ w_hh.t()
        h_t, c_t, act_t = lstm_cell_fwd(gates, c[:n])
        raws.append(h_t)
        if w_hr is not None:
            h_t = h_t @ w_hr.t()
        h, c = torch.cat([h_t, h[n:]]), torch.cat([c_t, c[n:]])
        outs.append(h_t)
        acts.append(act_t)
        cells.append(c_t)
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
    steps = _Steps(acts, batch_sizes, reverse, h0.shape[0])
    # dL/dh and dL/dc reaching each sequence's latest state, walking back.
    dh = grad_h_n if grad_h_n is not None else torch.zeros_like(h0)
    dc = grad_c_n if grad_c_n is not None else torch.zeros_like(c0)
    out_rows, acts_rows, cells_rows = steps.flat(output), steps.flat(acts), steps.flat(cells)
    go_rows = steps.flat(grad_output) if grad_output is not None else None
    raw_rows = steps.flat(h_raw) if w_hr is not None else None
    grad_x = [None] * steps.T
    grad_w_hh = torch.zeros_like(w_hh)
    grad_w_hr = torch.zeros_like(w_hr) if w_hr is not None else None
    for k in reversed(range(steps.T)):
        s = steps.plan[k]
        n = s.rows
        h_prev = steps.previous(out_rows, s, h0)
        c_prev = steps.previous(cells_rows, s, c0)
        act_t, c_t = steps.rows(acts_rows, s), steps.rows(cells_rows, s)
        dh_out = dh[:n] if go_rows is None else dh[:n] + steps.rows(go_rows, s)
        if w_hr is not None:
            grad_w_hr = grad_w_hr + dh_out.t() @ steps.rows(raw_rows, s)
            dh_cell = dh_out @ w_hr
        else:
            dh_cell = dh_out
        d_gates, dc_prev = lstm_cell_bwd(dh_cell, dc[:n], act_t, c_prev, c_t)
        grad_w_hh = grad_w_hh + d_gates.t() @ h_prev
        dh = torch.cat([d_gates @ w_hh, dh[n:]])
        dc = torch.cat([dc_prev, dc[n:]])
        grad_x[k] = d_gates
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
