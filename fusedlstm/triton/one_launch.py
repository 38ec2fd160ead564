"""The launcher of the one-launch layer kernels (persistent.py, streamed.py):
the buffers, the arguments and the launch of one layer's forward or backward,
written once for every such kernel. A kernel module describes its kernels
by a `Kernels` entry (tile sizes and warps for its sizes; whether its
kernels keep their state between steps in global scratch buffers) and
calls layer_fwd / layer_bwd with the kernel itself, named in its return
statement so that torch.library.triton_op finds every kernel of the layer
ops (it reads launchers' source for names of @triton.jit functions).

Every forward kernel takes these arguments, in this order (None for what it
does not use):
    x_ptr, w_hh_ptr, w_hr_ptr, h0_ptr, c0_ptr   [N, 4H], [4H, P], [P, H] (HAS_PROJ), [B, P], [B, H]
    out_ptr, h_n_ptr, c_n_ptr                   [N, P], [B, P], [B, H]
    acts_ptr, cells_ptr                         [N, 4H], [N, H] (SAVE)
    h_raw_ptr                                   (HAS_PROJ) [N, H] when SAVE, else [B, H] scratch
                                                (scratch kernels) or None
    h_buf_ptr, c_buf_ptr                        scratch: [2, B, P] data dtype, [B, H] MATH
    plan_ptr, T, B, H, P                        int64 [T, 4] plan (PACKED, steps.plan_entry)
    HAS_PROJ, PACKED, REVERSE, SAVE, MATH, DOT, BLOCK_B, and the entry's tiles
and every backward kernel these:
    go_ptr, dh_n_ptr, dc_n_ptr                  [N, P] (HAS_GO), [B, P] (HAS_DH_N), [B, H] (HAS_DC_N)
    w_hh_ptr, w_hr_ptr, c0_ptr                  [4H, P], [P, H] (HAS_PROJ), [B, H]
    acts_ptr, cells_ptr                         [N, 4H], [N, H]
    grad_x_ptr, dh_out_ptr                      [N, 4H], [N, P] (HAS_PROJ)
    grad_h0_ptr, grad_c0_ptr                    [B, P], [B, H]
    dh_buf_ptr, dc_buf_ptr                      scratch: [2, B, P], [B, H] MATH
    plan_ptr, T, B, H, P
    HAS_GO, HAS_DH_N, HAS_DC_N, HAS_PROJ, PACKED, REVERSE, MATH, DOT, BLOCK_B, and the tiles
([N, *] stands for the per-step layout, [T, B, *] for dense input.) Program k
owns batch rows [BLOCK_B k, BLOCK_B (k + 1)). The kernels only read their
inputs and set every buffer made here before reading it (streamed.py,
"Initial state"), so nothing is initialized on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import triton
from torch import Tensor

from .launch import dot_dtype, math_dtype, wrap_triton
from .steps import Steps, weight_gradients

BLOCK_B = 16  # batch rows per program; tl.dot needs every dimension >= 16


@dataclass(frozen=True)
class Kernels:
    """How to launch one pair of one-launch kernels."""

    tiles: Callable[[int, int], dict[str, Any]]  # (H, P) -> tile constexprs and launch options
    scratch: bool  # state between steps in global buffers (h_buf, c_buf; dh_buf, dc_buf)


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _contiguous(x: Tensor | None) -> Tensor | None:
    return x.contiguous() if x is not None else None


def layer_fwd(kernel, kernels: Kernels, x_proj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor,
              w_hr: Tensor | None, steps: Steps, save_for_backward: bool):
    """The contract's lstm_layer_fwd in one launch of `kernel` (arguments checked,
    sizes within the kernel's `fits`) -> output, h_n, c_n, acts, cells, h_raw."""
    B, H, P = steps.B, c0.shape[1], w_hh.shape[1]
    proj, save = w_hr is not None, save_for_backward
    x = x_proj.contiguous()
    lead = x.shape[:-1]
    output = x.new_empty(*lead, P)
    h_n, c_n = h0.new_empty(B, P), c0.new_empty(B, H)
    acts = x.new_empty(x.shape) if save else None
    cells = x.new_empty(*lead, H) if save else None
    # o * tanh(c), the projection's input: every step's when saving, else one step's.
    h_raw = x.new_empty(*(lead if save else (B,)), H) if proj and (save or kernels.scratch) else None
    h_buf = h0.new_empty(2 * B, P) if kernels.scratch else None
    c_buf = c0.new_empty(B, H, dtype=_state_dtype(c0.dtype)) if kernels.scratch else None
    if B > 0:
        wrap_triton(kernel)[(triton.cdiv(B, BLOCK_B),)](
            x, w_hh.contiguous(), _contiguous(w_hr), h0.contiguous(), c0.contiguous(),
            output, h_n, c_n, acts, cells, h_raw, h_buf, c_buf,
            steps.table, steps.T, B, H, P,
            HAS_PROJ=proj, PACKED=steps.packed, REVERSE=steps.reverse, SAVE=save,
            MATH=math_dtype(x.dtype), DOT=dot_dtype(x.dtype, kernel), BLOCK_B=BLOCK_B, **kernels.tiles(H, P))
    return (output, h_n, c_n, acts if save else x.new_empty(0), cells if save else x.new_empty(0),
            h_raw if save and proj else x.new_empty(0))  # returns must not alias each other


def layer_bwd(kernel, kernels: Kernels, grad_output: Tensor | None, grad_h_n: Tensor | None,
              grad_c_n: Tensor | None, w_hh: Tensor, h0: Tensor, c0: Tensor, w_hr: Tensor | None,
              steps: Steps, output: Tensor, acts: Tensor, cells: Tensor, h_raw: Tensor):
    """The contract's lstm_layer_bwd with the recurrence in one launch of `kernel`
    -> grad_x_proj, grad_w_hh, grad_h0, grad_c0, grad_w_hr (None without w_hr)."""
    B, H, P = steps.B, c0.shape[1], w_hh.shape[1]
    acts = acts.contiguous()
    state = _state_dtype(acts.dtype)
    grad_x = acts.new_empty(acts.shape)
    dh_out = acts.new_empty(*acts.shape[:-1], P) if w_hr is not None else None  # dL/d(out), for grad_w_hr
    grad_h0, grad_c0 = h0.new_empty(B, P), c0.new_empty(B, H)
    dh_buf = acts.new_empty(2 * B, P, dtype=state) if kernels.scratch else None
    dc_buf = acts.new_empty(B, H, dtype=state) if kernels.scratch else None
    if B > 0:
        wrap_triton(kernel)[(triton.cdiv(B, BLOCK_B),)](
            _contiguous(grad_output), _contiguous(grad_h_n), _contiguous(grad_c_n),
            w_hh.contiguous(), _contiguous(w_hr), c0.contiguous(), acts, cells.contiguous(),
            grad_x, dh_out, grad_h0, grad_c0, dh_buf, dc_buf,
            steps.table, steps.T, B, H, P,
            HAS_GO=grad_output is not None, HAS_DH_N=grad_h_n is not None,
            HAS_DC_N=grad_c_n is not None, HAS_PROJ=w_hr is not None, PACKED=steps.packed,
            REVERSE=steps.reverse, MATH=math_dtype(acts.dtype), DOT=dot_dtype(acts.dtype, kernel),
            BLOCK_B=BLOCK_B, **kernels.tiles(H, P))
    grad_w_hh, grad_w_hr = weight_gradients(steps, grad_x, output, h0, h_raw, dh_out)
    return grad_x, grad_w_hh, grad_h0, grad_c0, grad_w_hr
