// The cell ops on CUDA tensors: argument checks, the device guard and the
// current stream around lstm_cell_cuda.cuh, whose passes run as kernel
// launches (KernelRows).
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "checks_cuda.h"
#include "fusedlstm/checks.h"
#include "lstm_cell_cuda.cuh"
#include "lstm_cuda.h"

namespace fusedlstm::cuda {

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_fwd_cuda(const at::Tensor& gates,
                                                                  const at::Tensor& c_prev) {
  const CellShape s = check_cell_fwd_args(gates, c_prev);
  check_cuda_tensor(gates, "gates");
  check_hidden_size_fits(s.H);
  const c10::cuda::CUDAGuard device_guard(gates.device());
  return run_cell_fwd(KernelRows{at::cuda::getCurrentCUDAStream()}, s, gates, c_prev);
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
  return run_cell_bwd(KernelRows{at::cuda::getCurrentCUDAStream()}, s, grad_h, grad_c, act, c_prev, c);
}

}  // namespace fusedlstm::cuda
