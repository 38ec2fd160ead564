"""The streamed persistent LSTM layer kernel: one launch runs all T steps of
one layer and direction, for sizes whose weights do not fit on chip
(persistent.py), reading the weights from L2 every step.

Who owns what
    As in persistent.py: program k owns batch rows [16k, 16k + 16) and every
    hidden unit, and programs never wait for each other. W_hh [4H, P] at
    H = P = 256 is 512 KiB in bf16, more than an SM holds, so each step
    streams it in [BLOCK_J, BLOCK_K] chunks (from L2, where the 4HP
    elements stay resident across steps: 512 KiB of an H100's 50 MiB).

State between steps (per program, in global scratch memory)
    h  [2, B, P] in the data's dtype, double-buffered: step k reads buffer
       k % 2 (h_{t-1}, as rounded when stored) and writes the other one, so
       that no chunk of h_{t-1} is overwritten while other chunks still
       read it;
    c  [B, H] in float32 (float64 for float64 data), read and written one
       chunk at a time by the same threads;
    h_raw with a projection, read by the projection after a barrier: the
       saved [N, H] output at the step's rows when saving, else [B, H].
    A barrier (tl.debug_barrier, __syncthreads) ends each phase whose
    writes other threads of the program read next; within one SM these
    writes are visible after it.

Initial state: the kernels copy h0 and c0 (grad_h_n and grad_c_n, or
zeros, in the backward) into the state buffers themselves, before the first
step; the launchers allocate those buffers uninitialized. The kernels thus
only read their inputs and only write buffers made for them. Setting the
buffers on the host (c0.clone()) broke torch.compile in torch 2.11: the
compiled graph dropped the clone and gave the kernel the view hx[index]
itself, and inductor's copy of that mutated view read from the start of its
base storage (an as_strided with offset 0; the bug class of
pytorch/pytorch#192226). Every layer and direction then started from the
first one's c0 and grad_c_n: wrong outputs and gradients. Found on the CPU
(inductor's code with the kernels run by the interpreter); the rule is
checked in tests/test_triton.py.

Forward, per step, for each chunk of BLOCK_J hidden units:
    pre_g [BJ, 16] = x_proj[t]_g^T + sum_k W_g[chunk, k-chunk] @ h^T[k-chunk]
    gate math, c chunk, h chunk -> output (or h_raw), acts, cells (and h_raw)
  then, with a projection, h^T = W_hr @ h_raw^T in chunks of outputs.
Rows that do not take part in step t (packed input) copy their h forward
and keep their c, as in persistent.py.

Backward, per step in reverse order (dh [2, B, P] and dc [B, H] scratch in
float32):
  (projection) dh_out = dh + grad_output[t], stored (grad_W_hr needs it)
  for each hidden chunk: dh_raw (= dh_out, or W_hr^T @ dh_out), the gate
      backward, grad_x[t] and dc stored
  for each output chunk: dh = sum_g W_g^T @ grad_x[t]_g (read back after a
      barrier)
and the weight gradients as GEMMs after the loop (steps.weight_gradients).

Sizes: ops.py sends max(H, P) in (on-chip limit, STREAMED_LIMIT] here. The
chunk sizes and the limit are not tuned. Measured on an H200 (2026-11-28,
bfloat16, forward+backward, T=1000 or 100, H=256, against cuDNN in the same
run; benchmarks/RESULTS.md): B=1 31.6 and 31.0 ms (cuDNN 41.6 and 27.3 ms
in two runs), B=8 35.3 and 34.5 ms (cuDNN 41.7 and 27.4), B=32 (T=100, two
layers) 7.6 and 7.3 ms (cuDNN 12.6 and 9.0): steady across runs where cuDNN
was not, and near cuDNN rather than clearly ahead. Not yet compared with the
per-step path at these sizes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .gate_math import gates_backward, gates_forward, load_gates, store_gates
from .launch import dot_dtype, dot_precision, math_dtype, wrap_triton
from .persistent import BLOCK_B, batch_rows, previous_rows
from .steps import Steps, weight_gradients

BLOCK_J = 64  # hidden units (or outputs) per chunk; not tuned
BLOCK_K = 64  # reduction chunk of each product; not tuned
STREAMED_LIMIT = 256  # largest max(H, P) sent here; the public Triton LSTM kernels' range, unmeasured


@triton.jit
def init_rows(src, dst, b, in_batch, W, HAS_SRC: tl.constexpr, BLOCK_B: tl.constexpr,
              BLOCK: tl.constexpr):
    """dst[b, :W] = src[b, :W] (zeros without src), in dst's dtype, for this
    program's batch rows b: the kernels' own copy of an initial state."""
    cols = tl.arange(0, BLOCK)
    for w0 in range(0, W, BLOCK):
        w = w0 + cols
        at = b[None, :] * W + w[:, None]
        mask = (w < W)[:, None] & in_batch[None, :]
        if HAS_SRC:
            value = tl.load(src + at, mask=mask, other=0.0)
        else:
            value = tl.zeros([BLOCK, BLOCK_B], dtype=dst.dtype.element_ty)
        tl.store(dst + at, value.to(dst.dtype.element_ty), mask=mask)


@triton.jit
def carry(src, dst, at, mask, active, value):
    """dst[at] = value in the active batch columns; the rest keep src[at], the
    state of the previous step (src and dst: the two halves of a step buffer)."""
    keep = tl.load(src + at, mask=mask, other=0.0)
    tl.store(dst + at, tl.where(active[None, :], value, keep), mask=mask)


@triton.jit
def _lstm_streamed_fwd_kernel(
    x_ptr, w_hh_ptr, w_hr_ptr,             # [N, 4H], [4H, P], [P, H] (HAS_PROJ)
    out_ptr, acts_ptr, cells_ptr,          # [N, P], [N, 4H] and [N, H] (SAVE)
    h_raw_ptr,                             # (HAS_PROJ) [N, H] when SAVE, else [B, H] scratch
    h0_ptr, c0_ptr,                        # [B, P], [B, H]: read only
    h_buf_ptr, c_buf_ptr,                  # [2, B, P], [B, H] MATH: set from h0, c0 here
    sizes_ptr, offsets_ptr,                # int32 [T] (PACKED)
    T, B, H, P,
    HAS_PROJ: tl.constexpr, PACKED: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr,
    MATH: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)   # batch rows [BB]
    in_batch = b < B
    jj = tl.arange(0, BLOCK_J)
    kk = tl.arange(0, BLOCK_K)
    out_ty = out_ptr.dtype.element_ty

    init_rows(h0_ptr, h_buf_ptr, b, in_batch, P, True, BLOCK_B, BLOCK_J)  # h buffer 0
    init_rows(c0_ptr, c_buf_ptr, b, in_batch, H, True, BLOCK_B, BLOCK_J)
    tl.debug_barrier()
    for k in range(T):
        row, active = batch_rows(k, b, T, sizes_ptr, offsets_ptr, B, REVERSE, PACKED)
        if SAVE:
            raw_row = row                                     # the step's rows of the saved h_raw
        else:
            raw_row = b                                       # the scratch's rows
        h_src = h_buf_ptr + (k % 2) * B * P                   # h_{t-1}
        h_dst = h_buf_ptr + ((k + 1) % 2) * B * P             # h_t

        for j0 in range(0, H, BLOCK_J):
            j = j0 + jj
            jm = j < H
            mh = jm[:, None] & active[None, :]
            gate = row[None, :] * (4 * H) + j[:, None]        # [BJ, BB]
            acc_i, acc_f, acc_g, acc_o = load_gates(x_ptr, gate, H, mh, MATH)
            for k0 in range(0, P, BLOCK_K):
                q = k0 + kk
                qm = q < P
                h = tl.load(h_src + b[None, :] * P + q[:, None], mask=qm[:, None] & in_batch[None, :],
                            other=0.0).to(DOT)                # h^T chunk [BK, BB]
                w_at = j[:, None] * P + q[None, :]
                wm = jm[:, None] & qm[None, :]
                w_i, w_f, w_g, w_o = load_gates(w_hh_ptr, w_at, H * P, wm, DOT)
                acc_i = tl.dot(w_i, h, acc=acc_i, input_precision=PRECISION)
                acc_f = tl.dot(w_f, h, acc=acc_f, input_precision=PRECISION)
                acc_g = tl.dot(w_g, h, acc=acc_g, input_precision=PRECISION)
                acc_o = tl.dot(w_o, h, acc=acc_o, input_precision=PRECISION)
            state = b[None, :] * H + j[:, None]
            c_prev = tl.load(c_buf_ptr + state, mask=jm[:, None] & in_batch[None, :], other=0.0)
            i, f, g, o, c_new, h_new = gates_forward(acc_i, acc_f, acc_g, acc_o, c_prev)
            tl.store(c_buf_ptr + state, c_new, mask=mh)
            if SAVE:
                store_gates(acts_ptr, gate, H, i, f, g, o, mh)
                tl.store(cells_ptr + row[None, :] * H + j[:, None], c_new.to(out_ty), mask=mh)
            if HAS_PROJ:
                tl.store(h_raw_ptr + raw_row[None, :] * H + j[:, None], h_new.to(out_ty), mask=mh)
            else:
                tl.store(out_ptr + row[None, :] * P + j[:, None], h_new.to(out_ty), mask=mh)
                carry(h_src, h_dst, b[None, :] * P + j[:, None], jm[:, None] & in_batch[None, :], active,
                      h_new.to(out_ty))

        if HAS_PROJ:
            tl.debug_barrier()                                 # every chunk of h_raw is stored
            for p0 in range(0, P, BLOCK_J):
                p = p0 + jj
                pm = p < P
                acc = tl.zeros([BLOCK_J, BLOCK_B], dtype=MATH)
                for k0 in range(0, H, BLOCK_K):
                    q = k0 + kk
                    qm = q < H
                    h_raw = tl.load(h_raw_ptr + raw_row[None, :] * H + q[:, None],
                                    mask=qm[:, None] & active[None, :], other=0.0).to(DOT)
                    w_r = tl.load(w_hr_ptr + p[:, None] * H + q[None, :], mask=pm[:, None] & qm[None, :],
                                  other=0.0).to(DOT)
                    acc = tl.dot(w_r, h_raw, acc=acc, input_precision=PRECISION)
                tl.store(out_ptr + row[None, :] * P + p[:, None], acc.to(out_ty),
                         mask=pm[:, None] & active[None, :])
                carry(h_src, h_dst, b[None, :] * P + p[:, None], pm[:, None] & in_batch[None, :], active,
                      acc.to(out_ty))
        tl.debug_barrier()                                     # h_t complete before step k + 1 reads it


@triton.jit
def _lstm_streamed_bwd_kernel(
    go_ptr, w_hh_ptr, w_hr_ptr, c0_ptr,    # [N, P] (HAS_GO), [4H, P], [P, H] (HAS_PROJ), [B, H]
    acts_ptr, cells_ptr,                   # [N, 4H], [N, H]
    grad_x_ptr, dh_out_ptr,                # [N, 4H], [N, P] (HAS_PROJ)
    dh_n_ptr, dc_n_ptr,                    # grad_h_n [B, P] (HAS_DH_N), grad_c_n [B, H] (HAS_DC_N): read only
    dh_buf_ptr, dc_buf_ptr,                # [2, B, P], [B, H] MATH: set from dh_n, dc_n (or 0) here
    sizes_ptr, offsets_ptr,                # int32 [T] (PACKED)
    T, B, H, P,
    HAS_GO: tl.constexpr, HAS_DH_N: tl.constexpr, HAS_DC_N: tl.constexpr, HAS_PROJ: tl.constexpr,
    PACKED: tl.constexpr, REVERSE: tl.constexpr,
    MATH: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    in_batch = b < B
    jj = tl.arange(0, BLOCK_J)
    kk = tl.arange(0, BLOCK_K)
    out_ty = grad_x_ptr.dtype.element_ty

    init_rows(dh_n_ptr, dh_buf_ptr, b, in_batch, P, HAS_DH_N, BLOCK_B, BLOCK_J)  # dh buffer 0
    init_rows(dc_n_ptr, dc_buf_ptr, b, in_batch, H, HAS_DC_N, BLOCK_B, BLOCK_J)
    tl.debug_barrier()
    for r in range(T):
        k = T - 1 - r                                          # processing index, last first
        row, active = batch_rows(k, b, T, sizes_ptr, offsets_ptr, B, REVERSE, PACKED)
        row_prev, from_prev = previous_rows(k, b, T, sizes_ptr, offsets_ptr, B, REVERSE, PACKED)
        dh_src = dh_buf_ptr + (r % 2) * B * P                 # dL/dh_t
        dh_dst = dh_buf_ptr + ((r + 1) % 2) * B * P           # dL/dh_{t-1}

        if HAS_PROJ:
            for p0 in range(0, P, BLOCK_J):
                p = p0 + jj
                mp = (p < P)[:, None] & active[None, :]
                dh_out = tl.load(dh_src + b[None, :] * P + p[:, None], mask=mp, other=0.0)
                if HAS_GO:
                    dh_out += tl.load(go_ptr + row[None, :] * P + p[:, None], mask=mp, other=0.0).to(MATH)
                tl.store(dh_out_ptr + row[None, :] * P + p[:, None], dh_out.to(out_ty), mask=mp)
            tl.debug_barrier()                                 # dh_out of step t complete

        for j0 in range(0, H, BLOCK_J):
            j = j0 + jj
            jm = j < H
            mh = jm[:, None] & active[None, :]
            if HAS_PROJ:
                dh = tl.zeros([BLOCK_J, BLOCK_B], dtype=MATH)
                for k0 in range(0, P, BLOCK_K):
                    q = k0 + kk
                    qm = q < P
                    d = tl.load(dh_out_ptr + row[None, :] * P + q[:, None], mask=qm[:, None] & active[None, :],
                                other=0.0).to(DOT)
                    w_rt = tl.load(w_hr_ptr + q[None, :] * H + j[:, None], mask=jm[:, None] & qm[None, :],
                                   other=0.0).to(DOT)         # W_hr^T chunk [BJ, BK]
                    dh = tl.dot(w_rt, d, acc=dh, input_precision=PRECISION)
            else:
                dh = tl.load(dh_src + b[None, :] * P + j[:, None], mask=mh, other=0.0)
                if HAS_GO:
                    dh += tl.load(go_ptr + row[None, :] * P + j[:, None], mask=mh, other=0.0).to(MATH)
            gate = row[None, :] * (4 * H) + j[:, None]
            i, f, g, o = load_gates(acts_ptr, gate, H, mh, MATH)
            c = tl.load(cells_ptr + row[None, :] * H + j[:, None], mask=mh, other=0.0).to(MATH)
            c_prev = tl.where(
                from_prev[None, :],
                tl.load(cells_ptr + row_prev[None, :] * H + j[:, None], mask=mh & from_prev[None, :], other=0.0),
                tl.load(c0_ptr + b[None, :] * H + j[:, None], mask=mh & ~from_prev[None, :], other=0.0),
            ).to(MATH)
            state = b[None, :] * H + j[:, None]
            dc = tl.load(dc_buf_ptr + state, mask=mh, other=0.0)
            d_pi, d_pf, d_pg, d_po, dc_prev = gates_backward(i, f, g, o, c_prev, c, dh, dc)
            store_gates(grad_x_ptr, gate, H, d_pi, d_pf, d_pg, d_po, mh)
            tl.store(dc_buf_ptr + state, dc_prev, mask=mh)
        tl.debug_barrier()                                     # grad_x of step t complete

        for p0 in range(0, P, BLOCK_J):
            p = p0 + jj
            pm = p < P
            acc = tl.zeros([BLOCK_J, BLOCK_B], dtype=MATH)
            for k0 in range(0, H, BLOCK_K):
                q = k0 + kk
                qm = q < H
                wt_at = q[None, :] * P + p[:, None]           # W_g^T chunk [BJ, BK]: (p, j) = W[g*H + j, p]
                wt_mask = pm[:, None] & qm[None, :]
                d_at = row[None, :] * (4 * H) + q[:, None]    # grad_x[t]_g^T chunk [BK, BB]
                d_mask = qm[:, None] & active[None, :]
                for gate_index in tl.static_range(4):
                    acc = tl.dot(tl.load(w_hh_ptr + gate_index * H * P + wt_at, mask=wt_mask, other=0.0).to(DOT),
                                 tl.load(grad_x_ptr + gate_index * H + d_at, mask=d_mask, other=0.0).to(DOT),
                                 acc=acc, input_precision=PRECISION)
            carry(dh_src, dh_dst, b[None, :] * P + p[:, None], pm[:, None] & in_batch[None, :], active, acc)
        tl.debug_barrier()                                     # dL/dh_{t-1} complete


def fits(H: int, P: int, dtype: torch.dtype) -> bool:
    """Whether the streamed kernel serves these sizes (ops.py asks after persistent.fits)."""
    return dtype != torch.float64 and max(H, P) <= STREAMED_LIMIT


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def lstm_streamed_fwd(x_proj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, w_hr: Tensor | None,
                      steps: Steps, save_for_backward: bool):
    """The contract's lstm_layer_fwd in one launch, weights streamed
    (arguments checked) -> output, h_n, c_n, acts, cells, h_raw."""
    B, H, P = steps.B, c0.shape[1], w_hh.shape[1]
    x = x_proj.contiguous()
    output = x.new_empty(*x.shape[:-1], P)
    acts = x.new_empty(x.shape) if save_for_backward else x.new_empty(0)
    cells = x.new_empty(*x.shape[:-1], H) if save_for_backward else x.new_empty(0)
    # o * tanh(c), the projection's input: every step's when saving, else one step's.
    h_raw = x.new_empty(*(x.shape[:-1] if save_for_backward else (B,)), H) if w_hr is not None else None
    # Set from h0 and c0 by the kernel itself ("Initial state" above).
    h_buf = h0.new_empty(2 * B, P)
    c_buf = c0.new_empty(B, H, dtype=_state_dtype(c0.dtype))
    if B > 0:
        wrap_triton(_lstm_streamed_fwd_kernel)[(triton.cdiv(B, BLOCK_B),)](
            x, w_hh.contiguous(), w_hr.contiguous() if w_hr is not None else None,
            output, acts if save_for_backward else None, cells if save_for_backward else None,
            h_raw, h0.contiguous(), c0.contiguous(), h_buf, c_buf,
            steps.sizes, steps.offsets, steps.T, B, H, P,
            HAS_PROJ=w_hr is not None, PACKED=steps.packed, REVERSE=steps.reverse,
            SAVE=save_for_backward, MATH=math_dtype(x.dtype), PRECISION=dot_precision(x.dtype),
            DOT=dot_dtype(x.dtype, _lstm_streamed_fwd_kernel), BLOCK_B=BLOCK_B, BLOCK_J=BLOCK_J,
            BLOCK_K=BLOCK_K)
    h_n = h_buf.view(2, B, P)[steps.T % 2].clone()
    return (output, h_n, c_buf.to(c0.dtype), acts, cells,
            h_raw if save_for_backward and w_hr is not None else x.new_empty(0))


def lstm_streamed_bwd(grad_output: Tensor | None, grad_h_n: Tensor | None, grad_c_n: Tensor | None,
                      w_hh: Tensor, h0: Tensor, c0: Tensor, w_hr: Tensor | None, steps: Steps,
                      output: Tensor, acts: Tensor, cells: Tensor, h_raw: Tensor):
    """The contract's lstm_layer_bwd with the recurrence in one launch, weights
    streamed -> grad_x_proj, grad_w_hh, grad_h0, grad_c0, grad_w_hr (None without w_hr)."""
    B, H, P = steps.B, c0.shape[1], w_hh.shape[1]
    acts = acts.contiguous()
    state = _state_dtype(acts.dtype)
    grad_x = acts.new_empty(acts.shape)
    dh_out = acts.new_empty(*acts.shape[:-1], P) if w_hr is not None else None
    # As in the forward, set by the kernel: from grad_h_n and grad_c_n, or zeros.
    dh_buf = acts.new_empty(2 * B, P, dtype=state)
    dc_buf = acts.new_empty(B, H, dtype=state)
    precision = dot_precision(acts.dtype)
    if B > 0:
        wrap_triton(_lstm_streamed_bwd_kernel)[(triton.cdiv(B, BLOCK_B),)](
            grad_output.contiguous() if grad_output is not None else None,
            w_hh.contiguous(), w_hr.contiguous() if w_hr is not None else None, c0.contiguous(),
            acts, cells.contiguous(), grad_x, dh_out,
            grad_h_n.contiguous() if grad_h_n is not None else None,
            grad_c_n.contiguous() if grad_c_n is not None else None, dh_buf, dc_buf,
            steps.sizes, steps.offsets, steps.T, B, H, P,
            HAS_GO=grad_output is not None, HAS_DH_N=grad_h_n is not None,
            HAS_DC_N=grad_c_n is not None, HAS_PROJ=w_hr is not None, PACKED=steps.packed,
            REVERSE=steps.reverse, MATH=math_dtype(acts.dtype), PRECISION=precision,
            DOT=dot_dtype(acts.dtype, _lstm_streamed_bwd_kernel), BLOCK_B=BLOCK_B, BLOCK_J=BLOCK_J,
            BLOCK_K=BLOCK_K,
            # TF32 operands take more shared memory per pipeline stage: at Triton's
            # default 3 stages this kernel needs 246,784 bytes, over sm_90's 232,448;
            # at 2, 164,864 (ptxas via budget.py, Triton 3.8, float32, 2026-11-29).
            num_stages=2 if precision == "tf32" else 3)
    grad_h0 = dh_buf.view(2, B, P)[steps.T % 2].to(h0.dtype, copy=True)
    grad_w_hh, grad_w_hr = weight_gradients(steps, grad_x, output, h0, h_raw, dh_out)
    return grad_x, grad_w_hh, grad_h0, dc_buf.to(c0.dtype), grad_w_hr
