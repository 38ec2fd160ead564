// Fused LSTM cell on the GPU: one pass over the gates per step.
//   forward:  gates [B, 4H], c_prev [B, H] -> h [B, H], c [B, H], act [B, 4H]
//   backward: grad_h, grad_c, act, c_prev, c -> grad_gates [B, 4H], grad_c_prev [B, H]
// The kernels and the host code around them, a template over `Rows` (see
// pointwise_cuda.cuh) so that the CPU test of csrc/cuda runs it too; the ops
// in lstm_cell_cuda.cu add the checks, the device guard and the stream.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

#include <tuple>

#include "checks_cuda.h"
#include "fusedlstm/checks.h"
#include "pointwise_cuda.cuh"

namespace fusedlstm::cuda {

template <typename scalar_t>
struct CellFwdStep {
  int64_t n;  // B
  int H;
  const scalar_t* gates;   // [B, 4H]
  const scalar_t* c_prev;  // [B, H]
  scalar_t* act;           // [B, 4H]
  scalar_t* c;             // [B, H]
  scalar_t* h;             // [B, H]

  template <int VEC>
  FUSEDLSTM_HOST_DEVICE void units(int64_t b, int j) const {
    const int64_t g = b * 4 * H + j, u = b * H + j;
    lstm_fwd_units<VEC>(H, gates + g, static_cast<const scalar_t*>(nullptr), act + g, c_prev + u,
                        c + u, static_cast<scalar_t*>(nullptr), h + u,
                        static_cast<scalar_t*>(nullptr));
  }
};

template <int VEC, typename scalar_t>
__global__ void _lstm_cell_fwd_kernel(CellFwdStep<scalar_t> step) {
  for_each_unit<VEC>(step);
}

template <typename scalar_t>
struct CellBwdStep {
  int64_t n;  // B
  int H;
  const scalar_t* grad_h;  // [B, H]
  const scalar_t* grad_c;  // [B, H]
  const scalar_t* act;     // [B, 4H]
  const scalar_t* c_prev;  // [B, H]
  const scalar_t* c;       // [B, H]
  scalar_t* grad_gates;    // [B, 4H]
  scalar_t* grad_c_prev;   // [B, H]

  template <int VEC>
  FUSEDLSTM_HOST_DEVICE void units(int64_t b, int j) const {
    const int64_t g = b * 4 * H + j, u = b * H + j;
    lstm_bwd_units<VEC>(H, grad_h + u, static_cast<const scalar_t*>(nullptr), grad_c + u, act + g,
                        c_prev + u, c + u, grad_gates + g, grad_c_prev + u);
  }
};

template <int VEC, typename scalar_t>
__global__ void _lstm_cell_bwd_kernel(CellBwdStep<scalar_t> step) {
  for_each_unit<VEC>(step);
}

// lstm_cell_fwd on checked arguments of shape `s`.
template <typename Rows>
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_cell_fwd(const Rows& rows, const CellShape& s,
                                                            const at::Tensor& gates,
                                                            const at::Tensor& c_prev) {
  const at::Tensor gates_c = gates.contiguous();
  const at::Tensor c_prev_c = c_prev.contiguous();
  at::Tensor h = at::empty_like(c_prev_c);
  at::Tensor c = at::empty_like(c_prev_c);
  at::Tensor act = at::empty_like(gates_c);
  if (s.B == 0) return {h, c, act};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gates.scalar_type(), "lstm_cell_fwd_cuda", [&] {
    const CellFwdStep<scalar_t> step{s.B,
                                     static_cast<int>(s.H),
                                     kernel_input<scalar_t>(gates_c, "gates"),
                                     kernel_input<scalar_t>(c_prev_c, "c_prev"),
                                     kernel_output<scalar_t>(act, "act"),
                                     kernel_output<scalar_t>(c, "c"),
                                     kernel_output<scalar_t>(h, "h")};
    constexpr int V = kVecWidth<scalar_t>;
    if (s.H % V == 0 &&
        all_aligned(V * sizeof(scalar_t), step.gates, step.c_prev, step.act, step.c, step.h)) {
      rows.template run<V>(_lstm_cell_fwd_kernel<V, scalar_t>, step);
    } else {
      rows.template run<1>(_lstm_cell_fwd_kernel<1, scalar_t>, step);
    }
  });
  return {h, c, act};
}

// lstm_cell_bwd on checked arguments of shape `s`.
template <typename Rows>
std::tuple<at::Tensor, at::Tensor> run_cell_bwd(const Rows& rows, const CellShape& s,
                                                const at::Tensor& grad_h, const at::Tensor& grad_c,
                                                const at::Tensor& act, const at::Tensor& c_prev,
                                                const at::Tensor& c) {
  const at::Tensor gh = grad_h.contiguous(), gc = grad_c.contiguous(), a = act.contiguous(),
                   cp = c_prev.contiguous(), cc = c.contiguous();
  at::Tensor grad_gates = at::empty_like(a);
  at::Tensor grad_c_prev = at::empty_like(cp);
  if (s.B == 0) return {grad_gates, grad_c_prev};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, act.scalar_type(), "lstm_cell_bwd_cuda", [&] {
    const CellBwdStep<scalar_t> step{s.B,
                                     static_cast<int>(s.H),
                                     kernel_input<scalar_t>(gh, "grad_h"),
                                     kernel_input<scalar_t>(gc, "grad_c"),
                                     kernel_input<scalar_t>(a, "act"),
                                     kernel_input<scalar_t>(cp, "c_prev"),
                                     kernel_input<scalar_t>(cc, "c"),
                                     kernel_output<scalar_t>(grad_gates, "grad_gates"),
                                     kernel_output<scalar_t>(grad_c_prev, "grad_c_prev")};
    constexpr int V = kVecWidth<scalar_t>;
    if (s.H % V == 0 && all_aligned(V * sizeof(scalar_t), step.grad_h, step.grad_c, step.act,
                                    step.c_prev, step.c, step.grad_gates, step.grad_c_prev)) {
      rows.template run<V>(_lstm_cell_bwd_kernel<V, scalar_t>, step);
    } else {
      rows.template run<1>(_lstm_cell_bwd_kernel<1, scalar_t>, step);
    }
  });
  return {grad_gates, grad_c_prev};
}

}  // namespace fusedlstm::cuda
