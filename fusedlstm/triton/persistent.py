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
float32 data's dots follow torch's float32 matmul setting (PRECISION, from
launch.dot_precision: full "ieee" by default, "tf32" when torch allows it).

Masking
    Hidden units beyond H and outputs beyond P (tile sizes are powers of
    two, at least 16 for tl.dot) load zero weights, so they stay exactly 0
    and add nothing. Packed input: step t reads sizes[t] and offsets[t]
    from int32 tables on the device; a row b >= sizes[t] loads and stores
    nothing and keeps its h and c (tl.where), so a sequence that ended
    (forward) holds its final state for h_n / c_n and one that has not
    started (reverse) still holds h0 / c0.

Reverse
    The loop runs k = 0 .. T-1 over steps t = T-1-k (REVERSE constexpr);
    nothing else changes.

Backward (one launch, same ownership)
    Loops over the processing order backwards with dh^T [P, 16] and dc^T
    [H, 16] in registers, W_hh^T gate blocks [P, H] and W_hr^T [H, P] on
    chip. Per step: dh_out = dh + grad_output[t] (stored, with a
    projection, for grad_W_hr); dh_raw = W_hr^T @ dh_out; the gate backward
    with c_prev loaded from the previous processed step's cells (or c0 for a
    row taking part for the first time); grad_x[t] stored; and
    dh = sum_g W_g^T [P, H] @ d_pre_g [H, 16]. After the loop, the weight
    gradients are GEMMs over all steps (steps.weight_gradients).

On-chip budget and the size limit
    The weights held per program are 4HP (+ PH with a projection) elements:
    at H = P = 64, 32 KiB in fp16/bf16 and 64 KiB in fp32; at 128, 128 and
    256 KiB; at 256, 512 KiB and 1 MiB. An H100/H200 SM has 228 KiB of
    shared memory (227 KiB per block) and 64K 32-bit registers (at most 255
    per thread). Triton decides where the weight blocks live; ptxas's report
    for sm_90 (Triton 3.8, `python -m fusedlstm.triton.budget`, no GPU
    needed; 2026-11-28, remeasured for the kernels as they are now) shows that
    it stages them through shared memory and that shared memory is the limit.
    Registers / shared KiB per program, fwd and bwd, no spills anywhere:

        dtype  max(H, P)=64       128                  256 (first report)
        bf16   203/37, 190/43     255/137, 254/149     -/525, -/549  too big
        fp16   190/37, 191/43     255/137, 250/149     as bf16
        fp32   255/73, 210/117    32/273, 48/361 too big
        (with a projection, P = H/2: bf16 H=128 200/89, 254/101; fp32 H=128
         bwd 261 KiB, too big)

    So SIZE_LIMITS: max(H, P) <= 128 for 2-byte data (8 warps above 64),
    <= 64 for fp32. Larger sizes go to the streamed kernel (streamed.py),
    which reads the weights from L2 every step instead. Float64 always takes
    the per-step path (cuBLAS): tl.dot compiles float64 with Triton 3.8 for
    sm_90 (seen up to H = 32 in the report) but that is unverified for
    Triton 3.6, and float64 is for checking, not speed.

Performance is not measured here: no GPU was available while this was
written. The interpreter (TRITON_INTERPRET=1) checks correctness only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .gate_math import gates_backward, gates_forward, load_gates, store_gates
from .launch import dot_dtype, dot_precision, math_dtype, wrap_triton
from .steps import Steps, weight_gradients

BLOCK_B = 16  # batch rows per program; tl.dot needs every dimension >= 16

# Largest max(H, P) the persistent kernel serves, per element size of the
# data in bytes: what fits an sm_90 SM's shared memory by ptxas's report
# (`python -m fusedlstm.triton.budget`, table in the module docstring).
SIZE_LIMITS = {2: 128, 4: 64}


def num_warps(block_h: int, block_p: int) -> int:
    """4 warps up to 64-wide tiles, 8 for 128-wide ones (four times the
    work per step). Both compile without spills at 128 (ptxas, sm_90);
    which is faster is not measured: no GPU timed this yet."""
    return 4 if max(block_h, block_p) <= 64 else 8


@triton.jit
def step_rows(t, sizes_ptr, offsets_ptr, B, PACKED: tl.constexpr):
    """(first row, number of rows) of step t."""
    if PACKED:
        return tl.load(offsets_ptr + t), tl.load(sizes_ptr + t)
    else:
        return t * B, B


@triton.jit
def step_of(k, T, REVERSE: tl.constexpr):
    """The step processed k-th."""
    if REVERSE:
        return T - 1 - k
    else:
        return k


@triton.jit
def batch_rows(k, b, T, sizes_ptr, offsets_ptr, B, REVERSE: tl.constexpr, PACKED: tl.constexpr):
    """For batch rows b [BLOCK_B] in the step processed k-th: (their packed row
    indices [BLOCK_B] int64, which of them take part in the step)."""
    first, n = step_rows(step_of(k, T, REVERSE), sizes_ptr, offsets_ptr, B, PACKED)
    return (first + b).to(tl.int64), b < n


@triton.jit
def previous_rows(k, b, T, sizes_ptr, offsets_ptr, B, REVERSE: tl.constexpr, PACKED: tl.constexpr):
    """For batch rows b in the step processed k-th: (their packed row indices in
    the step processed before it, which of them continue from that step rather
    than start from h0 and c0)."""
    first, n = step_rows(step_of(tl.maximum(k - 1, 0), T, REVERSE), sizes_ptr, offsets_ptr, B, PACKED)
    return (first + b).to(tl.int64), (b < n) & (k > 0)


@triton.jit
def _lstm_persistent_fwd_kernel(
    x_ptr, w_hh_ptr, w_hr_ptr,             # [N, 4H], [4H, P], [P, H] (HAS_PROJ)
    h0_ptr, c0_ptr,                        # [B, P], [B, H]
    out_ptr, h_n_ptr, c_n_ptr,             # [N, P], [B, P], [B, H]
    acts_ptr, cells_ptr, h_raw_ptr,        # [N, 4H], [N, H] (SAVE), [N, H] (SAVE and HAS_PROJ)
    sizes_ptr, offsets_ptr,                # int32 [T] (PACKED)
    T, B, H, P,
    HAS_PROJ: tl.constexpr, PACKED: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr,
    MATH: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)   # batch rows   [BB]
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
        row, active = batch_rows(k, b, T, sizes_ptr, offsets_ptr, B, REVERSE, PACKED)
        mh = jm[:, None] & active[None, :]
        gate = row[None, :] * (4 * H) + j[:, None]            # [BH, BB]: gate i of (unit, row)

        hw = h.to(out_ty).to(DOT)                             # h rounded as stored, [BP, BB]
        pi = tl.dot(w_i, hw, acc=tl.load(x_ptr + gate, mask=mh, other=0.0).to(MATH),
                    input_precision=PRECISION)
        pf = tl.dot(w_f, hw, acc=tl.load(x_ptr + gate + H, mask=mh, other=0.0).to(MATH),
                    input_precision=PRECISION)
        pg = tl.dot(w_g, hw, acc=tl.load(x_ptr + gate + 2 * H, mask=mh, other=0.0).to(MATH),
                    input_precision=PRECISION)
        po = tl.dot(w_o, hw, acc=tl.load(x_ptr + gate + 3 * H, mask=mh, other=0.0).to(MATH),
                    input_precision=PRECISION)
        i, f, g, o, c_new, h_new = gates_forward(pi, pf, pg, po, c)
        if HAS_PROJ:
            h_raw = h_new.to(out_ty)                          # [BH, BB], the projection's input
            if SAVE:
                tl.store(h_raw_ptr + row[None, :] * H + j[:, None], h_raw, mask=mh)
            h_new = tl.dot(w_r, h_raw.to(DOT), input_precision=PRECISION).to(MATH)  # [BP, BB]

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
    go_ptr, dh_n_ptr, dc_n_ptr,            # [N, P] (HAS_GO), [B, P] (HAS_DH_N), [B, H] (HAS_DC_N)
    w_hh_ptr, w_hr_ptr, c0_ptr,            # [4H, P], [P, H] (HAS_PROJ), [B, H]
    acts_ptr, cells_ptr,                   # [N, 4H], [N, H]
    grad_x_ptr, dh_out_ptr,                # [N, 4H], [N, P] (HAS_PROJ)
    grad_h0_ptr, grad_c0_ptr,              # [B, P], [B, H]
    sizes_ptr, offsets_ptr,                # int32 [T] (PACKED)
    T, B, H, P,
    HAS_GO: tl.constexpr, HAS_DH_N: tl.constexpr, HAS_DC_N: tl.constexpr,
    HAS_PROJ: tl.constexpr, PACKED: tl.constexpr, REVERSE: tl.constexpr,
    MATH: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
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
        k = T - 1 - kk                                        # processing index, last first
        row, active = batch_rows(k, b, T, sizes_ptr, offsets_ptr, B, REVERSE, PACKED)
        row_prev, from_prev = previous_rows(k, b, T, sizes_ptr, offsets_ptr, B, REVERSE, PACKED)
        mh = jm[:, None] & active[None, :]
        mp = pm[:, None] & active[None, :]
        gate = row[None, :] * (4 * H) + j[:, None]
        cell = row[None, :] * H + j[:, None]

        dh_out = dh
        if HAS_GO:
            dh_out += tl.load(go_ptr + row[None, :] * P + p[:, None], mask=mp, other=0.0).to(MATH)
        if HAS_PROJ:
            tl.store(dh_out_ptr + row[None, :] * P + p[:, None], dh_out.to(out_ty), mask=mp)
            dh_cell = tl.dot(wt_r, dh_out.to(out_ty).to(DOT), input_precision=PRECISION).to(MATH)  # [BH, BB]
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
        dh_new = tl.dot(wt_i, d_pi.to(out_ty).to(DOT), input_precision=PRECISION)
        dh_new = tl.dot(wt_f, d_pf.to(out_ty).to(DOT), acc=dh_new, input_precision=PRECISION)
        dh_new = tl.dot(wt_g, d_pg.to(out_ty).to(DOT), acc=dh_new, input_precision=PRECISION)
        dh_new = tl.dot(wt_o, d_po.to(out_ty).to(DOT), acc=dh_new, input_precision=PRECISION)
        dh = tl.where(active[None, :], dh_new.to(MATH), dh)
        dc = tl.where(active[None, :], dc_prev, dc)

    tl.store(grad_h0_ptr + b[None, :] * P + p[:, None], dh.to(out_ty), mask=h_mask0)
    tl.store(grad_c0_ptr + b[None, :] * H + j[:, None], dc.to(out_ty), mask=c_mask0)


def fits(H: int, P: int, dtype: torch.dtype) -> bool:
    """Whether the persistent kernel serves hidden size H, output size P
    and dtype (else the layer runs the per-step path)."""
    limit = SIZE_LIMITS.get(torch.empty((), dtype=dtype).element_size()) if dtype != torch.float64 else None
    return limit is not None and max(H, P) <= limit


def _blocks(H: int, P: int) -> tuple[int, int]:
    return max(16, triton.next_power_of_2(H)), max(16, triton.next_power_of_2(P))


def lstm_persistent_fwd(x_proj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, w_hr: Tensor | None,
                        steps: Steps, save_for_backward: bool):
    """The contract's lstm_layer_fwd in one launch (arguments checked, sizes
    within `fits`) -> output, h_n, c_n, acts, cells, h_raw."""
    B, H, P = steps.B, c0.shape[1], w_hh.shape[1]
    x = x_proj.contiguous()
    output = x.new_empty(*x.shape[:-1], P)
    h_n, c_n = h0.new_empty(B, P), c0.new_empty(B, H)
    acts = x.new_empty(x.shape) if save_for_backward else x.new_empty(0)
    cells = x.new_empty(*x.shape[:-1], H) if save_for_backward else x.new_empty(0)
    save_raw = save_for_backward and w_hr is not None
    h_raw = x.new_empty(*x.shape[:-1], H) if save_raw else x.new_empty(0)
    block_h, block_p = _blocks(H, P)
    if B > 0:
        wrap_triton(_lstm_persistent_fwd_kernel)[(triton.cdiv(B, BLOCK_B),)](
            x, w_hh.contiguous(), w_hr.contiguous() if w_hr is not None else None,
            h0.contiguous(), c0.contiguous(), output, h_n, c_n,
            acts if save_for_backward else None, cells if save_for_backward else None,
            h_raw if save_raw else None,
            steps.sizes, steps.offsets, steps.T, B, H, P,
            HAS_PROJ=w_hr is not None, PACKED=steps.packed, REVERSE=steps.reverse,
            SAVE=save_for_backward, MATH=math_dtype(x.dtype), PRECISION=dot_precision(x.dtype),
            DOT=dot_dtype(x.dtype, _lstm_persistent_fwd_kernel), BLOCK_B=BLOCK_B,
            BLOCK_H=block_h, BLOCK_P=block_p, num_warps=num_warps(block_h, block_p))
    return output, h_n, c_n, acts, cells, h_raw


def lstm_persistent_bwd(grad_output: Tensor | None, grad_h_n: Tensor | None,
                        grad_c_n: Tensor | None, w_hh: Tensor, h0: Tensor, c0: Tensor,
                        w_hr: Tensor | None, steps: Steps, output: Tensor, acts: Tensor,
                        cells: Tensor, h_raw: Tensor):
    """The contract's lstm_layer_bwd with the recurrence in one launch
    -> grad_x_proj, grad_w_hh, grad_h0, grad_c0, grad_w_hr (None without w_hr)."""
    B, H, P = steps.B, c0.shape[1], w_hh.shape[1]
    acts = acts.contiguous()
    grad_x = acts.new_empty(acts.shape)
    dh_out = acts.new_empty(*acts.shape[:-1], P) if w_hr is not None else None
    grad_h0, grad_c0 = h0.new_empty(B, P), c0.new_empty(B, H)
    block_h, block_p = _blocks(H, P)
    if B > 0:
        wrap_triton(_lstm_persistent_bwd_kernel)[(triton.cdiv(B, BLOCK_B),)](
            grad_output.contiguous() if grad_output is not None else None,
            grad_h_n.contiguous() if grad_h_n is not None else None,
            grad_c_n.contiguous() if grad_c_n is not None else None,
            w_hh.contiguous(), w_hr.contiguous() if w_hr is not None else None, c0.contiguous(),
            acts, cells.contiguous(), grad_x, dh_out, grad_h0, grad_c0,
            steps.sizes, steps.offsets, steps.T, B, H, P,
            HAS_GO=grad_output is not None, HAS_DH_N=grad_h_n is not None,
            HAS_DC_N=grad_c_n is not None, HAS_PROJ=w_hr is not None, PACKED=steps.packed,
            REVERSE=steps.reverse, MATH=math_dtype(acts.dtype), PRECISION=dot_precision(acts.dtype),
            DOT=dot_dtype(acts.dtype, _lstm_persistent_bwd_kernel), BLOCK_B=BLOCK_B,
            BLOCK_H=block_h, BLOCK_P=block_p, num_warps=num_warps(block_h, block_p))
    grad_w_hh, grad_w_hr = weight_gradients(steps, grad_x, output, h0, h_raw, dh_out)
    return grad_x, grad_w_hh, grad_h0, grad_c0, grad_w_hr
