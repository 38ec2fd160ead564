// One LSTM layer and direction on the GPU: the whole recurrence in CUDA C++.
// The kernels and the host loops that drive them; the ops in
// lstm_layer_cuda.cu add the argument checks, the device guard and the
// stream. The loops are templates over `Rows`, which runs one step's
// pointwise pass (pointwise_cuda.cuh): the ops launch the kernels below on
// the current stream, and tests/cpp/test_cuda_on_host.cu runs the same
// per-thread code on the CPU, so that this file is exercised without a GPU.
//
// The steps run in the order of the layer's plan (fusedlstm/layer_plan.h).
// Forward, per plan entry (rows 0..n-1 of the step, n = its rows):
//   rec[n, 4H] = h_state[n, P] @ W_hh^T             cuBLAS GEMM (at::mm_out)
//   act, c, h  = gates(x_proj[t] + rec, c_state)     _lstm_layer_fwd_kernel
//   out[t]     = h @ W_hr^T   (with a projection; else out[t] = h)
// h_state / c_state hold each sequence's latest state, so packed sequences
// that end (forward) or start (reverse) at different steps need no copies.
//
// Backward runs the steps in the opposite order: the fused cell backward
// (_lstm_layer_bwd_kernel, c_prev from the plan's previous entry or c0) and
// one GEMM per step for the recurrent gradient dh_prev = d_gates @ W_hh; the
// weight gradients are single GEMMs over all steps after the loop
// (grad_w_hh: fusedlstm/weight_gradients.h, shared with the CPU backend).
//
// Design choices:
// - GEMMs go through ATen (at::mm_out into views of buffers allocated before
//   the loop), which keeps cuBLAS and its heuristics, the current stream and
//   the user's precision settings. The loop itself allocates nothing and
//   never synchronises with the host (the plan is built on the host before
//   it), so it can be captured in a CUDA graph.
// - The GEMM writes the recurrent part straight into the step's rows of
//   `acts`, and the pointwise kernel reads x_proj + rec and overwrites them
//   with the activations: the addition of x_proj costs no extra kernel (an
//   addmm with x_proj as its C operand would first copy x_proj into the
//   output: one more launch and 2 * 4H * n more elements moved per step).
// - Without a projection the backward kernel adds grad_output to dh itself;
//   with one, dL/d(out) is needed as a tensor for grad_w_hr, so it is formed
//   by at::add_out into a buffer that the final GEMM reads.
// - With a projection, the forward saves h = o*tanh(c) of every step (h_raw,
//   rounded once from float), which grad_w_hr needs; recomputing it from the
//   rounded o and c had 2.3x cuDNN's error in float16 (H200, 2026-11-28).
// - Half and bfloat16: the gate math runs in float, and the cell state c and
//   its gradient, which carry across steps and are touched only by these
//   kernels, stay in float between steps (rounded to the data type only where
//   they are returned: cells, c_n, grad_c0). GEMM inputs and outputs are in
//   the data type with float accumulation, cuBLAS's default.
// - float32 and TF32: the GEMMs here follow torch's matmul setting
//   (torch.backends.cuda.matmul.allow_tf32 / fp32_precision), whose default
//   is full IEEE fp32, while nn.LSTM on cuDNN follows
//   torch.backends.cudnn.allow_tf32, which defaults to True. At default
//   settings an fp32 benchmark therefore compares our fp32 GEMMs with
//   cuDNN's TF32 ones; a like-for-like comparison sets both flags the same
//   way (both off, or both on), and a benchmark should say which it used.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <optional>
#include <tuple>

#include "checks_cuda.h"
#include "fusedlstm/checks.h"
#include "fusedlstm/layer_plan.h"
#include "fusedlstm/weight_gradients.h"
#include "pointwise_cuda.cuh"

namespace fusedlstm::cuda {

// --- one step's pointwise pass ---------------------------------------------------------------

// Arguments of one forward step; pointers are at row 0 of the step, rows b < n.
template <typename scalar_t, typename state_t>
struct LayerFwdStep {
  int64_t n;
  int H;
  const scalar_t* x_proj;  // [n, 4H]: the step's input projections
  scalar_t* acts;          // [n, 4H]: in: the recurrent GEMM's result, out: post-activation gates
  state_t* c_state;        // [n, H]: in: c_prev, out: c
  scalar_t* cells;         // [n, H] or null: c again (saved for the backward)
  scalar_t* h;             // [n, H]: output rows (no projection, P == H) or the step's h_raw rows
  scalar_t* h_state;       // [n, H] or null: h again (no projection)

  // The work of one thread: hidden units j..j+VEC-1 of row b.
  template <int VEC>
  FUSEDLSTM_HOST_DEVICE void units(int64_t b, int j) const {
    const int64_t g = b * 4 * H + j, u = b * H + j;
    lstm_fwd_units<VEC>(H, x_proj + g, acts + g, acts + g, c_state + u, c_state + u,
                        cells ? cells + u : nullptr, h + u, h_state ? h_state + u : nullptr);
  }
};

template <int VEC, typename scalar_t, typename state_t>
__global__ void _lstm_layer_fwd_kernel(LayerFwdStep<scalar_t, state_t> step) {
  for_each_unit<VEC>(step);
}

// Arguments of one backward step; pointers are at row 0 of the step.
template <typename scalar_t, typename state_t>
struct LayerBwdStep {
  int64_t n;           // rows of the step
  int64_t continuing;  // rows b < continuing continue the previous entry; the others start from c0
  int H;
  const scalar_t* dh;        // [n, H] dL/dh of the cell (dh_state, or dh_raw with a projection)
  const scalar_t* grad_out;  // [n, H] or null: the step's grad_output rows, added to dh
  state_t* dc;               // [n, H] in: dL/dc, out: dL/dc_prev
  const scalar_t* act;       // [n, 4H]
  const scalar_t* c;         // [n, H]
  const scalar_t* c_prev;    // [continuing, H]: the previous entry's cells (null when continuing == 0)
  const scalar_t* c0;        // [B, H]
  scalar_t* d_gates;         // [n, 4H] -> grad_x_proj rows

  // The work of one thread: hidden units j..j+VEC-1 of row b.
  template <int VEC>
  FUSEDLSTM_HOST_DEVICE void units(int64_t b, int j) const {
    const int64_t g = b * 4 * H + j, u = b * H + j;
    lstm_bwd_units<VEC>(H, dh + u, grad_out ? grad_out + u : nullptr, dc + u, act + g,
                        (b < continuing ? c_prev : c0) + u, c + u, d_gates + g, dc + u);
  }
};

template <int VEC, typename scalar_t, typename state_t>
__global__ void _lstm_layer_bwd_kernel(LayerBwdStep<scalar_t, state_t> step) {
  for_each_unit<VEC>(step);
}

// --- the recurrence ---------------------------------------------------------------------------

// lstm_layer_fwd on checked arguments (geometry `g`); `rows` runs each step's
// pointwise pass (KernelRows: as a kernel).
template <typename Rows>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> run_layer_fwd(
    const Rows& rows, const LayerGeometry& g, const at::Tensor& x_proj, const at::Tensor& w_hh,
    const at::Tensor& h0, const at::Tensor& c0, const std::optional<at::Tensor>& w_hr,
    bool save) {
  const int64_t H = g.H, P = g.P, G = 4 * H;
  const bool proj = w_hr.has_value();
  const auto opts = x_proj.options();
  const at::ScalarType state_type = at::toOpMathType(x_proj.scalar_type());

  // Every buffer the loop touches is allocated here.
  const at::Tensor xp = x_proj.contiguous().view({g.rows, G});  // [rows, 4H]
  // Transposed views of contiguous weights: cuBLAS reads them as they are.
  const at::Tensor w_hh_t = w_hh.contiguous().t();                         // [P, 4H]
  const at::Tensor w_hr_t = proj ? w_hr->contiguous().t() : at::Tensor();  // [H, P]
  at::Tensor output = at::empty({g.rows, P}, opts);
  // Gate buffer: every step's activations when saving, else one step's.
  at::Tensor acts = at::empty({save ? g.rows : g.B, G}, opts);
  at::Tensor cells = at::empty({save ? g.rows : 0, H}, opts);
  at::Tensor h_state = h0.contiguous().clone();  // [B, P]
  at::Tensor c_state = c0.contiguous().to(state_type, /*non_blocking=*/false, /*copy=*/true);  // [B, H]
  // o * tanh(c), the projection's input: every step's when saving, else one step's.
  at::Tensor h_raw = at::empty({proj ? (save ? g.rows : g.B) : 0, H}, opts);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x_proj.scalar_type(), "lstm_layer_fwd_cuda", [&] {
    using state_t = at::opmath_type<scalar_t>;
    const scalar_t* xp_p = kernel_input<scalar_t>(xp, "x_proj");
    scalar_t* out_p = kernel_output<scalar_t>(output, "output");
    scalar_t* acts_p = kernel_output<scalar_t>(acts, "acts");
    scalar_t* cells_p = save ? kernel_output<scalar_t>(cells, "cells") : nullptr;
    scalar_t* hs_p = kernel_output<scalar_t>(h_state, "h_state");
    state_t* cs_p = kernel_output<state_t>(c_state, "c_state");
    scalar_t* hr_p = proj ? kernel_output<scalar_t>(h_raw, "h_raw") : nullptr;
    // Each step's pointers are these plus multiples of H elements: aligned
    // bases and H % V == 0 align every step's vector accesses.
    constexpr int V = kVecWidth<scalar_t>;
    const bool vec = H % V == 0 &&
                     all_aligned(V * sizeof(scalar_t), xp_p, out_p, acts_p, cells_p, hs_p, hr_p) &&
                     all_aligned(V * sizeof(state_t), cs_p);

    for (int64_t k = 0; k < g.T; ++k) {
      // h_state's rows 0..n-1 hold each sequence's latest h: the previous
      // entry's output for rows that continue, h0 for the others.
      const StepPlan& s = g.plan[k];
      const int64_t n = s.rows, off = s.offset;
      if (n == 0) continue;  // an empty batch (B == 0)
      const int64_t gate_row = save ? off : 0;  // also the step's first h_raw row
      at::Tensor rec = acts.narrow(0, gate_row, n);
      at::mm_out(rec, h_state.narrow(0, 0, n), w_hh_t);
      const LayerFwdStep<scalar_t, state_t> step{
          n, static_cast<int>(H), xp_p + off * G, acts_p + gate_row * G, cs_p,
          save ? cells_p + off * H : nullptr, proj ? hr_p + gate_row * H : out_p + off * P,
          proj ? nullptr : hs_p};
      if (vec) {
        rows.template run<V>(_lstm_layer_fwd_kernel<V, scalar_t, state_t>, step);
      } else {
        rows.template run<1>(_lstm_layer_fwd_kernel<1, scalar_t, state_t>, step);
      }
      if (proj) {
        at::Tensor out_t = output.narrow(0, off, n);
        at::mm_out(out_t, h_raw.narrow(0, gate_row, n), w_hr_t);
        h_state.narrow(0, 0, n).copy_(out_t);
      }
    }
  });

  at::Tensor c_n = c_state.to(x_proj.scalar_type());  // c_state itself when already that type
  if (!save) {
    acts = at::empty({0}, opts);
    cells = at::empty({0}, opts);
    h_raw = at::empty({0}, opts);
  } else {
    acts = acts.view(g.shape(G));
    cells = cells.view(g.shape(H));
    h_raw = proj ? h_raw.view(g.shape(H)) : at::empty({0}, opts);
  }
  return {output.view(g.shape(P)), h_state, c_n, acts, cells, h_raw};
}

// lstm_layer_bwd on checked arguments (geometry `g`); `rows` runs each step's
// pointwise pass (KernelRows: as a kernel).
template <typename Rows>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> run_layer_bwd(
    const Rows& rows, const LayerGeometry& g, const std::optional<at::Tensor>& grad_output,
    const std::optional<at::Tensor>& grad_h_n, const std::optional<at::Tensor>& grad_c_n,
    const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& w_hr, const at::Tensor& output, const at::Tensor& acts,
    const at::Tensor& cells, const at::Tensor& h_raw) {
  const int64_t H = g.H, P = g.P, G = 4 * H;
  const bool proj = w_hr.has_value();
  const auto opts = acts.options();
  const at::ScalarType state_type = at::toOpMathType(acts.scalar_type());

  // Every buffer the loop touches is allocated here.
  const at::Tensor acts2 = acts.contiguous().view({g.rows, G});
  const at::Tensor cells2 = cells.contiguous().view({g.rows, H});
  const at::Tensor out2 = output.contiguous().view({g.rows, P});
  const at::Tensor go2 =
      grad_output.has_value() ? grad_output->contiguous().view({g.rows, P}) : at::Tensor();
  const at::Tensor w_hh_c = w_hh.contiguous();                         // [4H, P]
  const at::Tensor w_hr_c = proj ? w_hr->contiguous() : at::Tensor();  // [P, H]
  const at::Tensor h0c = h0.contiguous(), c0c = c0.contiguous();

  at::Tensor grad_x = at::empty({g.rows, G}, opts);  // d(pre-activations), every step
  at::Tensor dh_state = grad_h_n.has_value() ? grad_h_n->contiguous().clone()
                                             : at::zeros({g.B, P}, opts);
  at::Tensor dc_state =
      grad_c_n.has_value()
          ? grad_c_n->contiguous().to(state_type, /*non_blocking=*/false, /*copy=*/true)
          : at::zeros({g.B, H}, opts.dtype(state_type));
  // With a projection: dL/d(out) of every step (for grad_w_hr), and dL/dh
  // of the current step.
  at::Tensor dh_out_all = at::empty({proj ? g.rows : 0, P}, opts);
  at::Tensor dh_raw = at::empty({proj ? g.B : 0, H}, opts);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, acts.scalar_type(), "lstm_layer_bwd_cuda", [&] {
    using state_t = at::opmath_type<scalar_t>;
    const scalar_t* acts_p = kernel_input<scalar_t>(acts2, "acts");
    const scalar_t* cells_p = kernel_input<scalar_t>(cells2, "cells");
    const scalar_t* go_p = go2.defined() ? kernel_input<scalar_t>(go2, "grad_output") : nullptr;
    const scalar_t* c0_p = kernel_input<scalar_t>(c0c, "c0");
    scalar_t* gx_p = kernel_output<scalar_t>(grad_x, "grad_x_proj");
    scalar_t* dhs_p = kernel_output<scalar_t>(dh_state, "dh_state");
    state_t* dcs_p = kernel_output<state_t>(dc_state, "dc_state");
    scalar_t* dhr_p = proj ? kernel_output<scalar_t>(dh_raw, "dh_raw") : nullptr;
    // As in the forward: aligned bases and H % V == 0 align every step's
    // vector accesses.
    constexpr int V = kVecWidth<scalar_t>;
    const bool vec =
        H % V == 0 &&
        all_aligned(V * sizeof(scalar_t), acts_p, cells_p, go_p, c0_p, gx_p, dhs_p, dhr_p) &&
        all_aligned(V * sizeof(state_t), dcs_p);

    for (int64_t k = g.T - 1; k >= 0; --k) {
      const StepPlan& s = g.plan[k];
      const int64_t n = s.rows, off = s.offset;
      if (n == 0) continue;  // an empty batch (B == 0)
      LayerBwdStep<scalar_t, state_t> step{};
      step.n = n;
      step.continuing = s.continuing;
      step.H = static_cast<int>(H);
      step.dh = dhs_p;
      step.grad_out = go_p ? go_p + off * P : nullptr;
      if (proj) {
        at::Tensor dh_out = dh_out_all.narrow(0, off, n);
        if (go2.defined()) {
          at::add_out(dh_out, dh_state.narrow(0, 0, n), go2.narrow(0, off, n));
        } else {
          dh_out.copy_(dh_state.narrow(0, 0, n));
        }
        at::Tensor dh_raw_n = dh_raw.narrow(0, 0, n);
        at::mm_out(dh_raw_n, dh_out, w_hr_c);
        step.dh = dhr_p;
        step.grad_out = nullptr;
      }
      step.dc = dcs_p;
      step.act = acts_p + off * G;
      step.c = cells_p + off * H;
      step.c_prev = k > 0 ? cells_p + s.prev_offset * H : nullptr;
      step.c0 = c0_p;
      step.d_gates = gx_p + off * G;
      if (vec) {
        rows.template run<V>(_lstm_layer_bwd_kernel<V, scalar_t, state_t>, step);
      } else {
        rows.template run<1>(_lstm_layer_bwd_kernel<1, scalar_t, state_t>, step);
      }
      at::Tensor dh_state_n = dh_state.narrow(0, 0, n);
      at::mm_out(dh_state_n, grad_x.narrow(0, off, n), w_hh_c);
    }
  });

  at::Tensor grad_w_hh = recurrent_weight_grad(g, grad_x, out2, h0c);  // [4H, P]
  at::Tensor grad_w_hr = proj ? at::mm(dh_out_all.t(), h_raw.contiguous().view({g.rows, H}))  // [P, H]
                              : at::empty({0}, opts);
  at::Tensor grad_c0 = dc_state.to(acts.scalar_type());  // dc_state itself when already that type
  return {grad_x.view(g.shape(G)), grad_w_hh, dh_state, grad_c0, grad_w_hr};
}

}  // namespace fusedlstm::cuda
