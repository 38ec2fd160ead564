"""The persistent LSTM layer kernel: one launch runs all T steps of one layer
and direction, forward and backward.

Who owns what
    Program k owns batch rows [16k, 16k + 16) (a batch tile, BLOCK_B = 16)
    and every hidden unit. It loads W_hh ([4H, P], as four gate blocks
    [H, P]) and W_hr ([P, H], with a projection) once, before the loop, and
    keeps them on chip for all T steps; its tile of h ([P, 16]) and c
    ([H, 16]) stays in registers from step to step, in float32 (float64 for
    float64 data). Nothing is exchanged between programs, so no grid-wide
    barrier is needed: a barrier would deadlock the Triton interpreter,
    which runs programs one after another, and the CI tests run there.

Each step, in registers (tiles transposed, [hidden, batch], so that the
hidden dimension is the M of the product and the small batch tile its N):
    pre_g [H, 16] = x_proj[t]_g^T + W_g [H, P] @ h^T [P, 16]   tl.dot per gate g
    i, f, g, o, c, h_raw = gate math (gate_math.py)
    h^T  [P, 16]  = W_hr [P, H] @ h_raw^T                      with a projection
and writes output, and acts / cells (and h_raw, with a projection) when
saving. h enters the product in the data's dtype (bf16 / fp16 tensor-core
products, float32 accumulation);
float32 data uses input_precision="ieee" (no TF32), for float32 accuracy.

Masking
    Hidden units beyond H and outputs beyond P (tile sizes are powers of
    two, at least 16 for tl.dot) load zero weights, so they stay exactly 0
    and add nothing. Each step reads its entry of the layer's plan
    (steps.plan_entry: the int64 table on the device for packed input,
    computed for dense input); a row b >= the entry's rows loads and
    stores nothing and keeps its h and c (tl.where), so a sequence that
    ended (forward) holds its final state for h_n / c_n and one that has
    not started (reverse) still holds h0 / c0.

Reverse
    The loop runs over the plan's entries k = 0 .. T-1, which are steps
    t = T-1-k (REVERSE constexpr); nothing else changes.

Backward (one launch, same ownership)
    Loops over the processing order backwards with dh^T [P, 16] and dc^T
    [H, 16] in registers, W_hh^T gate blocks [P, H] and W_hr^T [H, P] on
    chip. Per step: dh_out = dh + grad_output[t] (stored, with a
    projection, for grad_W_hr); dh_raw = W_hr^T @ dh_out; the gate backward
    with c_prev loaded from the previous entry's cells for the rows that
    continue from it (the others read c0); grad_x[t] stored; and
    dh = sum_g W_g^T [P, H] @ d_pre_g [H, 16]. After the loop, the weight
    gradients are GEMMs over all steps (steps.weight_gradients).

Launched by one_launch.py, which allocates the buffers and passes its
arguments (the kernels use no scratch buffers: their state is in registers).

On-chip budget and the size limit
    The weights held per program are 4HP (+ PH with a projection) elements:
    at H = P = 64, 32 KiB in fp16/bf16 and 64 KiB in fp32; at 128, 128 and
    256 KiB; at 256, 512 KiB and 1 MiB. An H100/H200 SM has 228 KiB of
    shared memory (227 KiB per block) and 64K 32-bit registers (at most 255
    per thread). Triton decides where the weight blocks live; ptxas's report
    for sm_90 (Triton 3.8, `python -m fusedlstm.triton.budget`, no GPU
    needed) shows that it stages them through shared memory and that shared
    memory is the limit. Registers / shared KiB per program, fwd and bwd, no
    spills anywhere:

        dtype  max(H, P)=64       128                  256
        bf16   252/37, 254/43     248/137, 255/149     255/525, 255/549  too big
        fp16   250/37, 254/43     248/137, 255/149     as bf16
        fp32   255/73, 222/117    32/273, 48/361 too big
        (with a projection, P = H/2: bf16 H=128 246/89, 255/101; fp32 H=128
         255/177, 255/261, bwd too big)

    So SIZE_LIMITS: max(H, P) <= 128 for 2-byte data (8 warps above 64),
    <= 64 for fp32. Larger sizes go to the streamed kernel (streamed.py),
    which reads the weights from L2 every step instead. Float64 always takes
    the per-step path (cuBLAS): tl.dot compiles float64 with Triton 3.8 for
    sm_90 (seen up to H = 32 in the report) but that is unverified for
    Triton 3.6, and float64 is for checking, not speed.

Speed, on an H200 (commit 62c5e73, torch 2.11, Triton 3.6, 2026-11-28;
`fusedlstm bench --device cuda --dtype bfloat16 --tf32 off`,
benchmarks/RESULTS.md and
benchmarks/results/gpu/h200-bfloat16-2026-11-28-run3.json): `small-h128`
(T=1000, B=8, I=64, H=128, bfloat16) forward+backward 6.41 ms against
cuDNN's 29.9 ms in the same run, 0.21x (forward 0.27x, backward 0.23x).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .gate_math import gates_backward, gates_forward, load_gates, store_gates
from .one_launch import Kernels, layer_bwd, layer_fwd
from .steps import Steps, entry_rows

# Largest max(H, P) the persistent kernel serves, per element size of the
# data in bytes: what fits an sm_90 SM's shared memory by ptxas's report
# (`python -m fusedlstm.triton.budget`, table in the module docstring).
SIZE_LIMITS = {2: 128, 4: 64}


def num_warps(block_h: int, block_p: int) -> int:
    """4 warps up to 64-wide tiles, 8 for 128-wide ones (four times the
    work per step). Both compile without spills at 128 (ptxas, sm_90);
    which is faster is not measured."""
    return 4 if max(block_h, block_p) <= 64 else 8


def _tiles(H: int, P: int) -> dict:
    block_h, block_p = max(16, triton.next_power_of_2(H)), max(16, triton.next_power_of_2(P))
    return dict(BLOCK_H=block_h, BLOCK_P=block_p, num_warps=num_warps(block_h, block_p))


KERNELS = Kernels(tiles=_tiles, scratch=False)


@triton.jit
def _lstm_persistent_fwd_kernel(
    x_ptr, w_hh_ptr, w_hr_ptr, h0_ptr, c0_ptr,  # arguments: one_launch.py
    out_ptr, h_n_ptr, c_n_ptr, acts_ptr, cells_ptr, h_raw_ptr,
    h_buf_ptr, c_buf_ptr,                  # unused: the state is in registers
    plan_ptr, T, B, H, P,
    HAS_PROJ: tl.constexpr, PACKED: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr,
    MATH: tl.constexpr, DOT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    b = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)  # batch rows [BB]
    j = tl.arange(0, BLOCK_H)                                 # hidden units [BH]
    p = tl.arange(0, BLOCK_P)                                 # outputs      [BP]
    in_batch = b < B
    jm, pm = j < H, p < P

    # W_hh gate blocks [BH, BP] (rows g*H + j) and W_hr [BP, BH], loaded once.
    w_at = j[:, None] * P + p[None, :]
    w_mask = jm[:, None] & pm[None, :]
    w_i, w_f, w_g, w_o = load_gates(w_hh_ptr, w_at, H * P, w_mask, DOT)
    if HAS_PROJ:
        w_r = tl.load(w_hr_ptr + p[:, None] * H + j[None, :], mask=pm[:, None] & jm[None, :],
                      other=0.0).to(DOT)
    out_ty = out_ptr.dtype.element_ty

    # State of the tile, transposed: h^T [BP, BB], c^T [BH, BB].
    h = tl.load(h0_ptr + b[None, :] * P + p[:, None], mask=pm[:, None] & in_batch[None, :],
                other=0.0).to(MATH)
    c = tl.load(c0_ptr + b[None, :] * H + j[:, None], mask=jm[:, None] & in_batch[None, :],
                other=0.0).to(MATH)
    for k in range(T):
        row, active, _, _ = entry_rows(plan_ptr, k, b, T, B, REVERSE, PACKED)
        mh = jm[:, None] & active[None, :]
        gate = row[None, :] * (4 * H) + j[:, None]            # [BH, BB]: gate i of (unit, row)

        hw = h.to(out_ty).to(DOT)                             # h rounded as stored, [BP, BB]
        pi = tl.dot(w_i, hw, acc=tl.load(x_ptr + gate, mask=mh, other=0.0).to(MATH),
                    input_precision="ieee")
        pf = tl.dot(w_f, hw, acc=tl.load(x_ptr + gate + H, mask=mh, other=0.0).to(MATH),
                    input_precision="ieee")
        pg = tl.dot(w_g, hw, acc=tl.load(x_ptr + gate + 2 * H, mask=mh, other=0.0).to(MATH),
                    input_precision="ieee")
        po = tl.dot(w_o, hw, acc=tl.load(x_ptr + gate + 3 * H, mask=mh, other=0.0).to(MATH),
                    input_precision="ieee")
        i, f, g, o, c_new, h_new = gates_forward(pi, pf, pg, po, c)
        if HAS_PROJ:
            h_raw = h_new.to(out_ty)                          # [BH, BB], the projection's input
            if SAVE:
                tl.store(h_raw_ptr + row[None, :] * H + j[:, None], h_raw, mask=mh)
            h_new = tl.dot(w_r, h_raw.to(DOT), input_precision="ieee").to(MATH)  # [BP, BB]

        tl.store(out_ptr + row[None, :] * P + p[:, None], h_new.to(out_ty),
                 mask=pm[:, None] & active[None, :])
        if SAVE:
            store_gates(acts_ptr, gate, H, i, f, g, o, mh)
            tl.store(cells_ptr + row[None, :] * H + j[:, None], c_new.to(out_ty), mask=mh)
        c = tl.where(active[None, :], c_new, c)
        h = tl.where(active[None, :], h_new, h)

    tl.store(h_n_ptr + b[None, :] * P + p[:, None], h.to(out_ty), mask=pm[:, None] & in_batch[None, :])
    tl.store(c_n_ptr + b[None, :] * H + j[:, None], c.to(out_ty), mask=jm[:, None] & in_batch[None, :])


@triton.jit
def _lstm_persistent_bwd_kernel(
    go_ptr, dh_n_ptr, dc_n_ptr,            # arguments: one_launch.py
    w_hh_ptr, w_hr_ptr, c0_ptr, acts_ptr, cells_ptr,
    grad_x_ptr, dh_out_ptr, grad_h0_ptr, grad_c0_ptr,
    dh_buf_ptr, dc_buf_ptr,                # unused: the state is in registers
    plan_ptr, T, B, H, P,
    HAS_GO: tl.constexpr, HAS_DH_N: tl.constexpr, HAS_DC_N: tl.constexpr,
    HAS_PROJ: tl.constexpr, PACKED: tl.constexpr, REVERSE: tl.constexpr,
    MATH: tl.constexpr, DOT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    b = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    j = tl.arange(0, BLOCK_H)
    p = tl.arange(0, BLOCK_P)
    in_batch = b < B
    jm, pm = j < H, p < P

    # W_hh^T gate blocks [BP, BH]: element (p, j) = W_hh[g*H + j, p]; W_hr^T [BH, BP].
    wt_at = j[None, :] * P + p[:, None]
    wt_mask = pm[:, None] & jm[None, :]
    wt_i, wt_f, wt_g, wt_o = load_gates(w_hh_ptr, wt_at, H * P, wt_mask, DOT)
    if HAS_PROJ:
        wt_r = tl.load(w_hr_ptr + p[None, :] * H + j[:, None], mask=jm[:, None] & pm[None, :],
                       other=0.0).to(DOT)
    out_ty = grad_x_ptr.dtype.element_ty

    h_mask0 = pm[:, None] & in_batch[None, :]
    c_mask0 = jm[:, None] & in_batch[None, :]
    if HAS_DH_N:
        dh = tl.load(dh_n_ptr + b[None, :] * P + p[:, None], mask=h_mask0, other=0.0).to(MATH)
    else:
        dh = tl.zeros([BLOCK_P, BLOCK_B], dtype=MATH)
    if HAS_DC_N:
        dc = tl.load(dc_n_ptr + b[None, :] * H + j[:, None], mask=c_mask0, other=0.0).to(MATH)
    else:
        dc = tl.zeros([BLOCK_H, BLOCK_B], dtype=MATH)

    for kk in range(T):
        k = T - 1 - kk                                        # plan entry, last first
        row, active, row_prev, from_prev = entry_rows(plan_ptr, k, b, T, B, REVERSE, PACKED)
        mh = jm[:, None] & active[None, :]
        mp = pm[:, None] & active[None, :]
        gate = row[None, :] * (4 * H) + j[:, None]
        cell = row[None, :] * H + j[:, None]

        dh_out = dh
        if HAS_GO:
            dh_out += tl.load(go_ptr + row[None, :] * P + p[:, None], mask=mp, other=0.0).to(MATH)
        if HAS_PROJ:
            tl.store(dh_out_ptr + row[None, :] * P + p[:, None], dh_out.to(out_ty), mask=mp)
            dh_cell = tl.dot(wt_r, dh_out.to(out_ty).to(DOT), input_precision="ieee").to(MATH)  # [BH, BB]
        else:
            dh_cell = dh_out

        i, f, g, o = load_gates(acts_ptr, gate, H, mh, MATH)
        c = tl.load(cells_ptr + cell, mask=mh, other=0.0).to(MATH)
        prev_mask = mh & from_prev[None, :]
        c_prev = tl.where(
            from_prev[None, :],
            tl.load(cells_ptr + row_prev[None, :] * H + j[:, None], mask=prev_mask, other=0.0),
            tl.load(c0_ptr + b[None, :] * H + j[:, None], mask=mh & ~from_prev[None, :], other=0.0),
        ).to(MATH)
        d_pi, d_pf, d_pg, d_po, dc_prev = gates_backward(i, f, g, o, c_prev, c, dh_cell, dc)

        store_gates(grad_x_ptr, gate, H, d_pi, d_pf, d_pg, d_po, mh)
        dh_new = tl.dot(wt_i, d_pi.to(out_ty).to(DOT), input_precision="ieee")
        dh_new = tl.dot(wt_f, d_pf.to(out_ty).to(DOT), acc=dh_new, input_precision="ieee")
        dh_new = tl.dot(wt_g, d_pg.to(out_ty).to(DOT), acc=dh_new, input_precision="ieee")
        dh_new = tl.dot(wt_o, d_po.to(out_ty).to(DOT), acc=dh_new, input_precision="ieee")
        dh = tl.where(active[None, :], dh_new.to(MATH), dh)
        dc = tl.where(active[None, :], dc_prev, dc)

    tl.store(grad_h0_ptr + b[None, :] * P + p[:, None], dh.to(out_ty), mask=h_mask0)
    tl.store(grad_c0_ptr + b[None, :] * H + j[:, None], dc.to(out_ty), mask=c_mask0)


def fits(H: int, P: int, dtype: torch.dtype) -> bool:
    """Whether the persistent kernel serves hidden size H, output size P
    and dtype (else the layer runs the per-step path)."""
    limit = SIZE_LIMITS.get(torch.empty((), dtype=dtype).element_size()) if dtype != torch.float64 else None
    return limit is not None and max(H, P) <= limit


def lstm_persistent_fwd(x_proj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, w_hr: Tensor | None,
                        steps: Steps, save_for_backward: bool):
    """The contract's lstm_layer_fwd in one launch (arguments checked, sizes
    within `fits`) -> output, h_n, c_n, acts, cells, h_raw."""
    return layer_fwd(_lstm_persistent_fwd_kernel, KERNELS, x_proj, w_hh, h0, c0, w_hr, steps,
                     save_for_backward)


def lstm_persistent_bwd(grad_output: Tensor | None, grad_h_n: Tensor | None,
                        grad_c_n: Tensor | None, w_hh: Tensor, h0: Tensor, c0: Tensor,
                        w_hr: Tensor | None, steps: Steps, output: Tensor, acts: Tensor,
                        cells: Tensor, h_raw: Tensor):
    """The contract's lstm_layer_bwd with the recurrence in one launch
    -> grad_x_proj, grad_w_hh, grad_h0, grad_c0, grad_w_hr (None without w_hr)."""
    return layer_bwd(_lstm_persistent_bwd_kernel, KERNELS, grad_output, grad_h_n, grad_c_n, w_hh, h0,
                     c0, w_hr, steps, output, acts, cells, h_raw)
