// The layer ops on CUDA tensors: argument checks, the device guard and the
// current stream around the recurrence of lstm_layer_cuda.cuh, whose steps
// run as kernel launches (KernelRows), or around the persistent kernels
// (persistent_layer_cuda.h) when they take the layer.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "checks_cuda.h"
#include "fusedlstm/checks.h"
#include "lstm_cuda.h"
#include "lstm_layer_cuda.cuh"
#include "persistent_layer_cuda.h"

namespace fusedlstm::cuda {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_fwd_cuda(
    const at::Tensor& x_proj, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& batch_sizes,
    bool reverse, bool save_for_backward) {
  const LayerGeometry g = check_layer_args(x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse);
  check_cuda_tensor(x_proj, "x_proj");
  check_hidden_size_fits(g.H);
  const c10::cuda::CUDAGuard device_guard(x_proj.device());
  // The cluster-resident kernels when they take the layer (sm_90, sizes within a cluster).
  if (auto fast = persistent::try_layer_fwd_cuda(x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse, save_for_backward)) {
    return *fast;
  }
  return run_layer_fwd(KernelRows{at::cuda::getCurrentCUDAStream()}, g, x_proj, w_hh, h0, c0, w_hr,
                       save_for_backward);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_bwd_cuda(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& w_hh, const at::Tensor& h0,
    const at::Tensor& c0, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, const at::Tensor& output,
    const at::Tensor& acts, const at::Tensor& cells, const at::Tensor& h_raw) {
  const LayerGeometry g = check_layer_bwd_args(grad_output, grad_h_n, grad_c_n, w_hh, h0, c0,
                                               w_hr, batch_sizes, reverse, output, acts, cells,
                                               h_raw);
  check_cuda_tensor(acts, "acts");
  check_hidden_size_fits(g.H);
  const c10::cuda::CUDAGuard device_guard(acts.device());
  if (auto fast = persistent::try_layer_bwd_cuda(grad_output, grad_h_n, grad_c_n, w_hh, h0, c0, w_hr, batch_sizes,
                                                  reverse, output, acts, cells, h_raw)) {
    return *fast;
  }
  return run_layer_bwd(KernelRows{at::cuda::getCurrentCUDAStream()}, g, grad_output, grad_h_n,
                       grad_c_n, w_hh, h0, c0, w_hr, output, acts, cells, h_raw);
}

}  // namespace fusedlstm::cuda
