// Host-side checks of the CUDA backend, on top of the shared argument checks
// of include/fusedlstm/checks.h (shapes, dtypes, same device): the device
// type, the 32-bit limits of the kernels' indexing, and the layout of every
// tensor whose raw pointer a kernel receives.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

#include "fusedlstm/checks.h"

namespace fusedlstm::cuda {

inline void check_cuda_tensor(const at::Tensor& x, const char* name) {
  check_device_type(x, c10::DeviceType::CUDA, name);
}

// The kernels index within a row of 4H gates with int (pointwise_cuda.cuh).
inline void check_hidden_size_fits(int64_t H) {
  TORCH_CHECK(4 * H <= std::numeric_limits<int32_t>::max(), "fusedlstm: the CUDA kernels "
              "need 4 * hidden size <= ", std::numeric_limits<int32_t>::max(), ", got hidden size ", H);
}

// The data of a tensor handed to a kernel as a raw pointer: the kernels
// index it as a dense row-major array of T (data_ptr checks T). The device
// is checked once per op, on entry.
template <typename T>
const T* kernel_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.is_contiguous(), "fusedlstm: kernel argument ", name, " must be contiguous, "
              "got sizes ", x.sizes(), " and strides ", x.strides());
  return x.const_data_ptr<T>();
}

template <typename T>
T* kernel_output(at::Tensor& x, const char* name) {
  TORCH_CHECK(x.is_contiguous(), "fusedlstm: kernel argument ", name, " must be contiguous, "
              "got sizes ", x.sizes(), " and strides ", x.strides());
  return x.mutable_data_ptr<T>();
}

}  // namespace fusedlstm::cuda
