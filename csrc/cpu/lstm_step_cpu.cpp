// The whole-step inference op (lstm_cell_step) on CPU tensors: the gates by
// two GEMMs, as FusedLSTMCell computes them, then the fused cell forward of
// lstm_cell_cpu.cpp at the process's SIMD level (compiled once, with no SIMD
// flags: its own code is glue). The op thus exists on the CPU too (its reference
// for the CUDA kernel, and for opcheck without a GPU); FusedLSTMCell runs it on CUDA.
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>

#include "fusedlstm/checks.h"
#include "lstm_cpu.h"

namespace fusedlstm::cpu {

std::tuple<at::Tensor, at::Tensor> lstm_cell_step_cpu(const at::Tensor& x, const at::Tensor& h,
                                                      const at::Tensor& c, const at::Tensor& w_ih,
                                                      const at::Tensor& w_hh,
                                                      const std::optional<at::Tensor>& b_ih,
                                                      const std::optional<at::Tensor>& b_hh) {
  check_cell_step_args(x, h, c, w_ih, w_hh, b_ih, b_hh);
  check_device_type(x, c10::DeviceType::CPU, "x");
  std::optional<at::Tensor> bias = b_ih;
  if (b_hh.has_value()) bias = bias.has_value() ? at::add(*bias, *b_hh) : *b_hh;
  at::Tensor gates = bias.has_value() ? at::addmm(*bias, x, w_ih.t()) : at::mm(x, w_ih.t());  // [B, 4H]
  gates.addmm_(h, w_hh.t());
  auto [h_next, c_next, act] = lstm_cell_fwd_cpu(gates, c);
  return {h_next, c_next};
}

}  // namespace fusedlstm::cpu
