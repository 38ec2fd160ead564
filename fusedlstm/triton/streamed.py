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

Initial and final state: the kernels copy h0 and c0 (grad_h_n and
grad_c_n, or zeros, in the backward) into the state buffers themselves,
before the first step, and the last step's state into h_n and c_n (grad_h0
and grad_c0) after it; the launcher (one_launch.py) allocates those buffers
uninitialized, so the kernels only read their inputs and only write
buffers made for them. Buffers set on the host from an input (c0.clone())
are not safe under torch.compile in torch 2.11: the compiled graph drops
the clone and hands the kernel the view hx[index] itself, and inductor's
copy of that mutated view reads from the start of its base storage (an
as_strided with offset 0; the bug class of pytorch/pytorch#192226), so every
layer and direction would start from the first one's c0 and grad_c_n.
tests/test_triton.py checks the rule.

Each step reads its entry of the layer's plan (steps.plan_entry), as in
persistent.py. Forward, per step, for each chunk of BLOCK_J hidden units:
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
was not, and near cuDNN rather than clearly ahead. The per-step path was
not timed at these sizes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .gate_math import gates_backward, gates_forward, load_gates, store_gates
from .one_launch import Kernels, layer_bwd, layer_fwd
from .steps import Steps, entry_rows

BLOCK_J = 64  # hidden units (or outputs) per chunk; not tuned
BLOCK_K = 64  # reduction chunk of each product; not tuned
STREAMED_LIMIT = 256  # largest max(H, P) sent here; the public Triton LSTM kernels' range, unmeasured

KERNELS = Kernels(tiles=lambda H, P: dict(BLOCK_J=BLOCK_J, BLOCK_K=BLOCK_K), scratch=True)


@triton.jit
def copy_rows(src, dst, b, in_batch, W, HAS_SRC: tl.constexpr, BLOCK_B: tl.constexpr,
              BLOCK: tl.constexpr):
    """dst[b, :W] = src[b, :W] (zeros without src), in dst's dtype, for this
    program's batch rows b: the kernels' own copy of an initial or final state."""
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
def half(i, B, W):
    """Offset (int64: 2BW can pass 2^31) of half i % 2 of a double buffer [2, B, W]."""
    return tl.cast(i % 2, tl.int64) * B * W


@triton.jit
def carry(src, dst, at, mask, active, value):
    """dst[at] = value in the active batch columns; the rest keep src[at], the
    state of the previous step (src and dst: the two halves of a step buffer)."""
    keep = tl.load(src + at, mask=mask, other=0.0)
    tl.store(dst + at, tl.where(active[None, :], value, keep), mask=mask)


@triton.jit
def _lstm_streamed_fwd_kernel(
    x_ptr, w_hh_ptr, w_hr_ptr, h0_ptr, c0_ptr,  # arguments: one_launch.py
    out_ptr, h_n_ptr, c_n_ptr, acts_ptr, cells_ptr, h_raw_ptr,
    h_buf_ptr, c_buf_ptr,                  # [2, B, P], [B, H] MATH: set from h0, c0 here
    plan_ptr, T, B, H, P,
    HAS_PROJ: tl.constexpr, PACKED: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr,
    MATH: tl.constexpr, DOT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    b = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)  # batch rows [BB]
    in_batch = b < B
    jj = tl.arange(0, BLOCK_J)
    kk = tl.arange(0, BLOCK_K)
    out_ty = out_ptr.dtype.element_ty

    copy_rows(h0_ptr, h_buf_ptr, b, in_batch, P, True, BLOCK_B, BLOCK_J)  # h buffer 0
    copy_rows(c0_ptr, c_buf_ptr, b, in_batch, H, True, BLOCK_B, BLOCK_J)
    tl.debug_barrier()
    for k in range(T):
        row, active, _, _ = entry_rows(plan_ptr, k, b, T, B, REVERSE, PACKED)
        if SAVE:
            raw_row = row                                     # the step's rows of the saved h_raw
        else:
            raw_row = b                                       # the scratch's rows
        h_src = h_buf_ptr + half(k, B, P)                     # h_{t-1}
        h_dst = h_buf_ptr + half(k + 1, B, P)                 # h_t

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
                acc_i = tl.dot(w_i, h, acc=acc_i, input_precision="ieee")
                acc_f = tl.dot(w_f, h, acc=acc_f, input_precision="ieee")
                acc_g = tl.dot(w_g, h, acc=acc_g, input_precision="ieee")
                acc_o = tl.dot(w_o, h, acc=acc_o, input_precision="ieee")
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
                    acc = tl.dot(w_r, h_raw, acc=acc, input_precision="ieee")
                tl.store(out_ptr + row[None, :] * P + p[:, None], acc.to(out_ty),
                         mask=pm[:, None] & active[None, :])
                carry(h_src, h_dst, b[None, :] * P + p[:, None], pm[:, None] & in_batch[None, :], active,
                      acc.to(out_ty))
        tl.debug_barrier()                                     # h_t complete before step k + 1 reads it
    copy_rows(h_buf_ptr + half(T, B, P), h_n_ptr, b, in_batch, P, True, BLOCK_B, BLOCK_J)
    copy_rows(c_buf_ptr, c_n_ptr, b, in_batch, H, True, BLOCK_B, BLOCK_J)


@triton.jit
def _lstm_streamed_bwd_kernel(
    go_ptr, dh_n_ptr, dc_n_ptr,            # arguments: one_launch.py
    w_hh_ptr, w_hr_ptr, c0_ptr, acts_ptr, cells_ptr,
    grad_x_ptr, dh_out_ptr, grad_h0_ptr, grad_c0_ptr,
    dh_buf_ptr, dc_buf_ptr,                # [2, B, P], [B, H] MATH: set from dh_n, dc_n (or 0) here
    plan_ptr, T, B, H, P,
    HAS_GO: tl.constexpr, HAS_DH_N: tl.constexpr, HAS_DC_N: tl.constexpr, HAS_PROJ: tl.constexpr,
    PACKED: tl.constexpr, REVERSE: tl.constexpr,
    MATH: tl.constexpr, DOT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_J: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    b = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    in_batch = b < B
    jj = tl.arange(0, BLOCK_J)
    kk = tl.arange(0, BLOCK_K)
    out_ty = grad_x_ptr.dtype.element_ty

    copy_rows(dh_n_ptr, dh_buf_ptr, b, in_batch, P, HAS_DH_N, BLOCK_B, BLOCK_J)  # dh buffer 0
    copy_rows(dc_n_ptr, dc_buf_ptr, b, in_batch, H, HAS_DC_N, BLOCK_B, BLOCK_J)
    tl.debug_barrier()
    for r in range(T):
        k = T - 1 - r                                          # plan entry, last first
        row, active, row_prev, from_prev = entry_rows(plan_ptr, k, b, T, B, REVERSE, PACKED)
        dh_src = dh_buf_ptr + half(r, B, P)                   # dL/dh_t
        dh_dst = dh_buf_ptr + half(r + 1, B, P)               # dL/dh_{t-1}

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
                    dh = tl.dot(w_rt, d, acc=dh, input_precision="ieee")
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
                                 acc=acc, input_precision="ieee")
            carry(dh_src, dh_dst, b[None, :] * P + p[:, None], pm[:, None] & in_batch[None, :], active, acc)
        tl.debug_barrier()                                     # dL/dh_{t-1} complete
    copy_rows(dh_buf_ptr + half(T, B, P), grad_h0_ptr, b, in_batch, P, True, BLOCK_B, BLOCK_J)
    copy_rows(dc_buf_ptr, grad_c0_ptr, b, in_batch, H, True, BLOCK_B, BLOCK_J)


def fits(H: int, P: int, dtype: torch.dtype) -> bool:
    """Whether the streamed kernel serves these sizes (ops.py asks after persistent.fits)."""
    return dtype != torch.float64 and max(H, P) <= STREAMED_LIMIT


def lstm_streamed_fwd(x_proj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, w_hr: Tensor | None,
                      steps: Steps, save_for_backward: bool):
    """The contract's lstm_layer_fwd in one launch, weights streamed
    (arguments checked) -> output, h_n, c_n, acts, cells, h_raw."""
    return layer_fwd(_lstm_streamed_fwd_kernel, KERNELS, x_proj, w_hh, h0, c0, w_hr, steps,
                     save_for_backward)


def lstm_streamed_bwd(grad_output: Tensor | None, grad_h_n: Tensor | None, grad_c_n: Tensor | None,
                      w_hh: Tensor, h0: Tensor, c0: Tensor, w_hr: Tensor | None, steps: Steps,
                      output: Tensor, acts: Tensor, cells: Tensor, h_raw: Tensor):
    """The contract's lstm_layer_bwd with the recurrence in one launch, weights
    streamed -> grad_x_proj, grad_w_hh, grad_h0, grad_c0, grad_w_hr (None without w_hr)."""
    return layer_bwd(_lstm_streamed_bwd_kernel, KERNELS, grad_output, grad_h_n, grad_c_n, w_hh, h0,
                     c0, w_hr, steps, output, acts, cells, h_raw)
