"""One layer and direction, one step at a time: per step one GEMM
(torch.addmm, into a preallocated buffer) and one fused cell kernel
(cell.py). Serves every size; the persistent kernel (persistent.py) is
faster where W_hh fits on chip.

Forward, per entry of the layer's plan (step t; dense shapes; packed input
runs on its padded layout, steps.py):
  pre[B, 4H] = x_proj[t] + h_state @ W_hh^T        addmm, into acts[t] when saving
  act, c, h  = cell(pre, c_state)                   c_state, cells[t] and h
                                                    (out[t] and h_state, or h_raw) in one launch
  out[t]     = h_raw @ W_hr^T                       with a projection; then h_state = out[t]
Rows that do not take part in step t (packed input: b >= the entry's rows,
read by the cell kernel from the plan on the device) keep their state.

Backward, per step in the opposite order:
  dh_out     = dh_state + grad_output[t]            (added inside the cell kernel without a projection)
  dh         = dh_out @ W_hr                        with a projection
  d_gates, dc_state = cell_bwd(dh, dc_state, ...)   into grad_x[t]
  dh_state   = d_gates @ W_hh                       GEMM
and the weight gradients as single GEMMs after the loop (steps.weight_gradients).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cell import lstm_cell_bwd, lstm_cell_fwd
from .steps import Steps, weight_gradients


def lstm_layer_fwd(x_proj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, w_hr: Tensor | None,
                   steps: Steps, save_for_backward: bool):
    """The contract's lstm_layer_fwd (arguments already checked; `steps` from
    batch_sizes and reverse) -> output, h_n, c_n, acts, cells, h_raw."""
    T, B = steps.T, steps.B
    H, P = c0.shape[1], w_hh.shape[1]
    x = steps.to_padded(x_proj)                         # [T, B, 4H]
    out = x.new_empty(T, B, P)
    acts = x.new_empty(T, B, 4 * H) if save_for_backward else None
    cells = x.new_empty(T, B, H) if save_for_backward else None
    pre = None if save_for_backward else x.new_empty(B, 4 * H)
    # o * tanh(c), the projection's input: every step's when saving, else one step's.
    h_raw = (x.new_empty(T, B, H) if save_for_backward else x.new_empty(B, H)) if w_hr is not None else None
    h_state = h0.contiguous().clone()
    c_state = c0.contiguous().clone()
    w_hh_t = w_hh.t()
    for k, t in enumerate(steps.order):
        gates = acts[t] if save_for_backward else pre
        torch.addmm(x[t], h_state, w_hh_t, out=gates)
        h = (h_raw[t] if save_for_backward else h_raw) if w_hr is not None else out[t]
        lstm_cell_fwd(gates, c_state, out=(gates, c_state, h),
                      c_copy=cells[t] if save_for_backward else None,
                      h_copy=None if w_hr is not None else h_state, rows=steps.rows(k))
        if w_hr is not None:
            torch.mm(h, w_hr.t(), out=out[t])
            steps.commit(h_state, out[t], t)
    return (steps.to_packed(out), h_state, c_state,
            steps.to_packed(acts) if save_for_backward else x.new_empty(0),
            steps.to_packed(cells) if save_for_backward else x.new_empty(0),
            steps.to_packed(h_raw) if save_for_backward and w_hr is not None else x.new_empty(0))


def lstm_layer_bwd(grad_output: Tensor | None, grad_h_n: Tensor | None, grad_c_n: Tensor | None,
                   w_hh: Tensor, h0: Tensor, c0: Tensor, w_hr: Tensor | None, steps: Steps,
                   output: Tensor, acts: Tensor, cells: Tensor, h_raw: Tensor):
    """The contract's lstm_layer_bwd (arguments already checked)
    -> grad_x_proj, grad_w_hh, grad_h0, grad_c0, grad_w_hr (None without w_hr)."""
    T, B = steps.T, steps.B
    H, P = c0.shape[1], w_hh.shape[1]
    acts_p = steps.to_padded(acts)                      # [T, B, 4H]
    cells_p = steps.to_padded(cells)                    # [T, B, H]
    c_prev = steps.previous_padded(cells, c0)           # [T, B, H]
    go = steps.to_padded(grad_output) if grad_output is not None else None
    dh = grad_h_n.contiguous().clone() if grad_h_n is not None else h0.new_zeros(B, P)
    dc = grad_c_n.contiguous().clone() if grad_c_n is not None else c0.new_zeros(B, H)
    grad_x = acts_p.new_empty(T, B, 4 * H)
    dh_out = acts_p.new_empty(T, B, P) if w_hr is not None else None
    dh_raw = acts_p.new_empty(B, H) if w_hr is not None else None
    dh_next = acts_p.new_empty(B, P) if steps.packed else None
    for k in reversed(range(T)):
        t = steps.order[k]
        if w_hr is not None:
            if go is not None:
                torch.add(dh, go[t], out=dh_out[t])
            else:
                dh_out[t].copy_(dh)
            torch.mm(dh_out[t], w_hr, out=dh_raw)
            dh_cell, dh_extra = dh_raw, None
        else:
            dh_cell, dh_extra = dh, go[t] if go is not None else None
        lstm_cell_bwd(dh_cell, dc, acts_p[t], c_prev[t], cells_p[t], grad_h_extra=dh_extra,
                      out=(grad_x[t], dc), rows=steps.rows(k))
        if steps.packed:
            torch.mm(grad_x[t], w_hh, out=dh_next)
            steps.commit(dh, dh_next, t)
        else:
            torch.mm(grad_x[t], w_hh, out=dh)
    grad_x = steps.to_packed(grad_x)
    grad_out = steps.to_packed(dh_out) if w_hr is not None else None
    grad_w_hh, grad_w_hr = weight_gradients(steps, grad_x, output, h0, h_raw, grad_out)
    return grad_x, grad_w_hh, dh, dc, grad_w_hr
