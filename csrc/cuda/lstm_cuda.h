// CUDA implementations of the op contract (csrc/ops.cpp); registered for the
// CUDA dispatch key in register_cuda.cpp. Same semantics as the CPU backend
// (csrc/cpu/lstm_cpu.h) and fusedlstm/reference.py.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace fusedlstm::cuda {

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_fwd_cuda(const at::Tensor& gates,
                                                                  const at::Tensor& c_prev);

std::tuple<at::Tensor, at::Tensor> lstm_cell_bwd_cuda(const at::Tensor& grad_h,
                                                      const at::Tensor& grad_c,
                                                      const at::Tensor& act,
                                                      const at::Tensor& c_prev,
                                                      const at::Tensor& c);

std::tuple<at::Tensor, at::Tensor> lstm_cell_step_cuda(const at::Tensor& x, const at::Tensor& h,
                                                       const at::Tensor& c, const at::Tensor& w_ih,
                                                       const at::Tensor& w_hh,
                                                       const std::optional<at::Tensor>& b_ih,
                                                       const std::optional<at::Tensor>& b_hh);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_fwd_cuda(
    const at::Tensor& x_proj, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& batch_sizes,
    bool reverse, bool save_for_backward);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_bwd_cuda(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& w_hh, const at::Tensor& h0,
    const at::Tensor& c0, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, const at::Tensor& output,
    const at::Tensor& acts, const at::Tensor& cells, const at::Tensor& h_raw);

}  // namespace fusedlstm::cuda
