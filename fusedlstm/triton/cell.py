"""The fused LSTM cell in Triton: gate activations and cell update in one
pass (forward), and its backward; the per-step layer (layer.py) runs them
once per step.

Each program owns a [BLOCK_B, BLOCK_H] tile of (row, hidden unit) pairs and
reads the four gates of each unit; every tensor is row-contiguous ([B, 4H]
or [B, H]). Half and bfloat16 data is computed in float32, float64 in
float64.

Optional operands (all None when unused) let the layer fuse its per-step
work into the same launch, as the CPU kernels' lstm_fwd_row does:
  c_copy   [B, H]   a second destination for c (the saved cells of step t)
  h_copy   [B, H]   a second destination for h (the recurrent state)
  rows     (plan, k): only the rows of entry k of the layer's plan (the
           int64 [T, 4] table on the device, fusedlstm.plan) take part,
           b < its rows; the others keep their state and, in the backward,
           get zero gate gradients. The count is read on the device, so the
           launcher never reads batch_sizes on the host.
Element offsets are int64: rows * 4H passes 2^31 at sizes an H200 holds
(B = 2^19 rows of H = 1024 in float16 is 4 GiB of gates).
Destinations may alias sources element for element (c onto c_prev, act onto
gates, dc_prev onto dc): each element is read before it is written, by the
same program.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .gate_math import gates_backward, gates_forward, load_gates, store_gates
from .launch import math_dtype, wrap_triton
from .steps import plan_entry


@triton.jit
def _active_rows(rows, plan_ptr, entry, B, N_ON_DEVICE: tl.constexpr):
    """Mask of the rows that take part: rows < the plan entry's rows, or < B."""
    if N_ON_DEVICE:
        _, n, _, _ = plan_entry(plan_ptr, entry, 0, B, False, True)
        return (rows < n) & (rows < B)
    else:
        return rows < B


@triton.jit
def tile_offsets(rows, units, H):
    """Element offsets (int64) of (row, unit) in [B, 4H] gate rows and in
    [B, H] state rows: ([BLOCK_B, BLOCK_H], [BLOCK_B, BLOCK_H])."""
    r = rows.to(tl.int64)[:, None]
    return r * (4 * H) + units[None, :], r * H + units[None, :]


@triton.jit
def _lstm_cell_fwd_kernel(
    pre_ptr, c_prev_ptr,                   # [B, 4H], [B, H]
    act_ptr, c_ptr, h_ptr,                 # [B, 4H], [B, H], [B, H]
    c_copy_ptr, h_copy_ptr,                # [B, H] (HAS_C_COPY / HAS_H_COPY)
    plan_ptr, entry,                       # int64 [T, 4] plan, entry index (N_ON_DEVICE)
    B, H,
    HAS_C_COPY: tl.constexpr, HAS_H_COPY: tl.constexpr,
    N_ON_DEVICE: tl.constexpr, MATH: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)   # [BLOCK_B]
    units = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H]
    mask = _active_rows(rows, plan_ptr, entry, B, N_ON_DEVICE)[:, None] & (units < H)[None, :]
    gate, state = tile_offsets(rows, units, H)                  # gate i of (row, unit); its c and h

    pi, pf, pg, po = load_gates(pre_ptr, gate, H, mask, MATH)
    c_prev = tl.load(c_prev_ptr + state, mask=mask, other=0.0).to(MATH)
    i, f, g, o, c, h = gates_forward(pi, pf, pg, po, c_prev)

    out_ty = act_ptr.dtype.element_ty
    store_gates(act_ptr, gate, H, i, f, g, o, mask)
    tl.store(c_ptr + state, c.to(out_ty), mask=mask)
    tl.store(h_ptr + state, h.to(out_ty), mask=mask)
    if HAS_C_COPY:
        tl.store(c_copy_ptr + state, c.to(out_ty), mask=mask)
    if HAS_H_COPY:
        tl.store(h_copy_ptr + state, h.to(out_ty), mask=mask)


@triton.jit
def _lstm_cell_bwd_kernel(
    dh_ptr, dh_extra_ptr, dc_ptr,          # [B, H], [B, H] (HAS_DH_EXTRA, added), [B, H]
    act_ptr, c_prev_ptr, c_ptr,            # [B, 4H], [B, H], [B, H]
    d_gates_ptr, dc_prev_ptr,              # [B, 4H], [B, H]
    plan_ptr, entry,                       # int64 [T, 4] plan, entry index (N_ON_DEVICE)
    B, H,
    HAS_DH_EXTRA: tl.constexpr, N_ON_DEVICE: tl.constexpr, MATH: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    units = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    in_tile = (rows < B)[:, None] & (units < H)[None, :]
    mask = _active_rows(rows, plan_ptr, entry, B, N_ON_DEVICE)[:, None] & (units < H)[None, :]
    gate, state = tile_offsets(rows, units, H)

    i, f, g, o = load_gates(act_ptr, gate, H, mask, MATH)
    c_prev = tl.load(c_prev_ptr + state, mask=mask, other=0.0).to(MATH)
    c = tl.load(c_ptr + state, mask=mask, other=0.0).to(MATH)
    dh = tl.load(dh_ptr + state, mask=mask, other=0.0).to(MATH)
    if HAS_DH_EXTRA:
        dh += tl.load(dh_extra_ptr + state, mask=mask, other=0.0).to(MATH)
    dc = tl.load(dc_ptr + state, mask=mask, other=0.0).to(MATH)
    d_pi, d_pf, d_pg, d_po, dc_prev = gates_backward(i, f, g, o, c_prev, c, dh, dc)

    # Rows that do not take part get zero gate gradients (the layer's GEMMs
    # run over all B rows) and keep their dc.
    out_ty = d_gates_ptr.dtype.element_ty
    zero = tl.zeros_like(d_pi)
    store_gates(d_gates_ptr, gate, H, tl.where(mask, d_pi, zero), tl.where(mask, d_pf, zero),
                tl.where(mask, d_pg, zero), tl.where(mask, d_po, zero), in_tile)
    tl.store(dc_prev_ptr + state, dc_prev.to(out_ty), mask=mask)


def _tiles(B: int, H: int) -> tuple[int, int]:
    """(BLOCK_B, BLOCK_H): about 1024 units (4096 gates) per program, the
    whole row when H <= 128. Not tuned: no timing stands behind this choice."""
    block_h = min(triton.next_power_of_2(max(H, 1)), 128)
    block_b = min(triton.next_power_of_2(max(B, 1)), max(1, 1024 // block_h))
    return block_b, block_h


def _row_count(rows: tuple[Tensor, int] | None):
    return (None, 0, False) if rows is None else (rows[0], rows[1], True)


def lstm_cell_fwd(gates: Tensor, c_prev: Tensor, *, out: tuple[Tensor, Tensor, Tensor] | None = None, c_copy: Tensor | None = None,
                  h_copy: Tensor | None = None,
                  rows: tuple[Tensor, int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """gates [B, 4H], c_prev [B, H] -> h [B, H], c [B, H], act [B, 4H].

    Contiguous operands only. `out` = (act, c, h) buffers to write, else new
    ones; see the module docstring for c_copy, h_copy and rows."""
    B, H = c_prev.shape
    act, c, h = out if out is not None else (torch.empty_like(gates), torch.empty_like(c_prev),
                                             torch.empty_like(c_prev))
    plan_ptr, entry, on_device = _row_count(rows)
    block_b, block_h = _tiles(B, H)
    if B > 0 and H > 0:  # else there is nothing to compute
        grid = (triton.cdiv(B, block_b), triton.cdiv(H, block_h))
        wrap_triton(_lstm_cell_fwd_kernel)[grid](
            gates, c_prev, act, c, h, c_copy, h_copy, plan_ptr, entry, B, H,
            HAS_C_COPY=c_copy is not None, HAS_H_COPY=h_copy is not None,
            N_ON_DEVICE=on_device, MATH=math_dtype(gates.dtype), BLOCK_B=block_b, BLOCK_H=block_h)
    return h, c, act


def lstm_cell_bwd(grad_h: Tensor, grad_c: Tensor, act: Tensor, c_prev: Tensor, c: Tensor, *,
                  grad_h_extra: Tensor | None = None,
                  out: tuple[Tensor, Tensor] | None = None,
                  rows: tuple[Tensor, int] | None = None) -> tuple[Tensor, Tensor]:
    """grad_h (+ grad_h_extra), grad_c [B, H], act [B, 4H], c_prev, c [B, H]
    -> grad_gates [B, 4H], grad_c_prev [B, H].

    Contiguous operands only. `out` = (grad_gates, grad_c_prev) buffers to
    write (grad_c_prev may be grad_c itself), else new ones."""
    B, H = c_prev.shape
    grad_gates, grad_c_prev = out if out is not None else (torch.empty_like(act),
                                                           torch.empty_like(c_prev))
    plan_ptr, entry, on_device = _row_count(rows)
    block_b, block_h = _tiles(B, H)
    if B > 0 and H > 0:  # else there is nothing to compute
        grid = (triton.cdiv(B, block_b), triton.cdiv(H, block_h))
        wrap_triton(_lstm_cell_bwd_kernel)[grid](
            grad_h, grad_h_extra, grad_c, act, c_prev, c, grad_gates, grad_c_prev, plan_ptr, entry, B, H,
            HAS_DH_EXTRA=grad_h_extra is not None, N_ON_DEVICE=on_device,
            MATH=math_dtype(act.dtype), BLOCK_B=block_b, BLOCK_H=block_h)
    return grad_gates, grad_c_prev
