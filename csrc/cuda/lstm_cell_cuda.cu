// Fused LSTM cell on the GPU: one pass over the gates per step.
//   forward:  gates [B, 4H], c_prev [B, H] -> h [B, H], c [B, H], act [B, 4H]
//   backward: grad_h, grad_c, act, c_prev, c -> grad_gates [B, 4H], grad_c_prev [B, H]
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>

#include "checks_cuda.h"
#include "fusedlstm/checks.h"
#include "lstm_cuda.h"
#include "pointwise_cuda.cuh"

namespace fusedlstm::cuda {

// One thread: VEC units of one row b. gates, act: [B, 4H]; c_prev, c, h: [B, H].
template <int VEC, typename scalar_t>
__global__ void _lstm_cell_fwd_kernel(int64_t B, int H, const scalar_t* gates,
                                      const scalar_t* c_prev, scalar_t* act, scalar_t* c,
                                      scalar_t* h) {
  const int group = unit_group();
  if (group >= H / VEC) return;
  const int j = group * VEC;
  for (int64_t b = first_row(); b < B; b += row_stride()) {
    const int64_t g = b * 4 * H + j, s = b * H + j;
    lstm_fwd_units<VEC>(H, gates + g, static_cast<const scalar_t*>(nullptr), act + g, c_prev + s,
                        c + s, static_cast<scalar_t*>(nullptr), h + s,
                        static_cast<scalar_t*>(nullptr));
  }
}

// One thread: VEC units of one row b. act, grad_gates: [B, 4H]; the rest [B, H].
template <int VEC, typename scalar_t>
__global__ void _lstm_cell_bwd_kernel(int64_t B, int H, const scalar_t* grad_h,
                                      const scalar_t* grad_c, const scalar_t* act,
                                      const scalar_t* c_prev, const scalar_t* c,
                                      scalar_t* grad_gates, scalar_t* grad_c_prev) {
  const int group = unit_group();
  if (group >= H / VEC) return;
  const int j = group * VEC;
  for (int64_t b = first_row(); b < B; b += row_stride()) {
    const int64_t g = b * 4 * H + j, s = b * H + j;
    lstm_bwd_units<VEC>(H, grad_h + s, static_cast<const scalar_t*>(nullptr), grad_c + s, act + g,
                        c_prev + s, c + s, grad_gates + g, grad_c_prev + s,
                        static_cast<scalar_t*>(nullptr));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_fwd_cuda(const at::Tensor& gates,
                                                                  const at::Tensor& c_prev) {
  const CellShape s = check_cell_fwd_args(gates, c_prev);
  check_cuda_tensor(gates, "gates");
  check_hidden_size_fits(s.H);
  const c10::cuda::CUDAGuard device_guard(gates.device());
  const at::Tensor gates_c = gates.contiguous();
  const at::Tensor c_prev_c = c_prev.contiguous();
  at::Tensor h = at::empty_like(c_prev_c);
  at::Tensor c = at::empty_like(c_prev_c);
  at::Tensor act = at::empty_like(gates_c);
  if (s.B == 0) return {h, c, act};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gates.scalar_type(), "lstm_cell_fwd_cuda", [&] {
    const scalar_t* g = kernel_input<scalar_t>(gates_c, "gates");
    const scalar_t* cp = kernel_input<scalar_t>(c_prev_c, "c_prev");
    scalar_t* a = kernel_output<scalar_t>(act, "act");
    scalar_t* cc = kernel_output<scalar_t>(c, "c");
    scalar_t* hh = kernel_output<scalar_t>(h, "h");
    constexpr int V = kVecWidth<scalar_t>;
    const int H = static_cast<int>(s.H);
    if (H % V == 0 && all_aligned(V * sizeof(scalar_t), g, cp, a, cc, hh)) {
      launch_rows(_lstm_cell_fwd_kernel<V, scalar_t>, s.B, H / V, stream, s.B, H, g, cp, a, cc, hh);
    } else {
      launch_rows(_lstm_cell_fwd_kernel<1, scalar_t>, s.B, H, stream, s.B, H, g, cp, a, cc, hh);
    }
  });
  return {h, c, act};
}

std::tuple<at::Tensor, at::Tensor> lstm_cell_bwd_cuda(const at::Tensor& grad_h,
                                                      const at::Tensor& grad_c,
                                                      const at::Tensor& act,
                                                      const at::Tensor& c_prev,
                                                      const at::Tensor& c) {
  const CellShape s = check_cell_bwd_args(grad_h, grad_c, act, c_prev, c);
  check_cuda_tensor(act, "act");
  check_hidden_size_fits(s.H);
  const c10::cuda::CUDAGuard device_guard(act.device());
  const at::Tensor gh = grad_h.contiguous(), gc = grad_c.contiguous(), a = act.contiguous(),
                   cp = c_prev.contiguous(), cc = c.contiguous();
  at::Tensor grad_gates = at::empty_like(a);
  at::Tensor grad_c_prev = at::empty_like(cp);
  if (s.B == 0) return {grad_gates, grad_c_prev};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, act.scalar_type(), "lstm_cell_bwd_cuda", [&] {
    const scalar_t* ghp = kernel_input<scalar_t>(gh, "grad_h");
    const scalar_t* gcp = kernel_input<scalar_t>(gc, "grad_c");
    const scalar_t* ap = kernel_input<scalar_t>(a, "act");
    const scalar_t* cpp = kernel_input<scalar_t>(cp, "c_prev");
    const scalar_t* ccp = kernel_input<scalar_t>(cc, "c");
    scalar_t* dg = kernel_output<scalar_t>(grad_gates, "grad_gates");
    scalar_t* dcp = kernel_output<scalar_t>(grad_c_prev, "grad_c_prev");
    constexpr int V = kVecWidth<scalar_t>;
    const int H = static_cast<int>(s.H);
    if (H % V == 0 && all_aligned(V * sizeof(scalar_t), ghp, gcp, ap, cpp, ccp, dg, dcp)) {
      launch_rows(_lstm_cell_bwd_kernel<V, scalar_t>, s.B, H / V, stream, s.B, H, ghp, gcp, ap,
                  cpp, ccp, dg, dcp);
    } else {
      launch_rows(_lstm_cell_bwd_kernel<1, scalar_t>, s.B, H, stream, s.B, H, ghp, gcp, ap, cpp,
                  ccp, dg, dcp);
    }
  });
  return {grad_gates, grad_c_prev};
}

}  // namespace fusedlstm::cuda
