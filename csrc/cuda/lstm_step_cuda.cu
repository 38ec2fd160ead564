// The whole-step inference op on CUDA tensors: argument checks, the device
// guard and the current stream around lstm_step_cuda.cuh's one launch.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

#include "checks_cuda.h"
#include "fusedlstm/checks.h"
#include "lstm_cuda.h"
#include "lstm_step_cuda.cuh"

namespace fusedlstm::cuda {

std::tuple<at::Tensor, at::Tensor> lstm_cell_step_cuda(const at::Tensor& x, const at::Tensor& h,
                                                       const at::Tensor& c, const at::Tensor& w_ih,
                                                       const at::Tensor& w_hh,
                                                       const std::optional<at::Tensor>& b_ih,
                                                       const std::optional<at::Tensor>& b_hh) {
  const StepShape s = check_cell_step_args(x, h, c, w_ih, w_hh, b_ih, b_hh);
  check_cuda_tensor(x, "x");
  check_hidden_size_fits(s.H);
  TORCH_CHECK(s.I <= std::numeric_limits<int32_t>::max(), "fusedlstm: the CUDA step kernel needs "
              "input size <= ", std::numeric_limits<int32_t>::max(), ", got ", s.I);
  const c10::cuda::CUDAGuard device_guard(x.device());
  return run_cell_step(StepKernelLauncher{at::cuda::getCurrentCUDAStream()}, s, x, h, c, w_ih, w_hh,
                       b_ih, b_hh);
}

}  // namespace fusedlstm::cuda
