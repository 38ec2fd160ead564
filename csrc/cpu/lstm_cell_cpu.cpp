// Fused LSTM cell on the CPU: one pass over the gates per step.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

#include "fusedlstm/checks.h"
#include "lstm_cpu.h"
#include "pointwise_cpu.h"

namespace fusedlstm::cpu {
inline namespace CPU_CAPABILITY {  // one copy per SIMD level (lstm_cpu.h)

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_cell_fwd_cpu(const at::Tensor& gates,
                                                                 const at::Tensor& c_prev) {
  const CellShape s = check_cell_fwd_args(gates, c_prev);
  check_device_type(gates, c10::DeviceType::CPU, "gates");
  const at::Tensor gates_c = gates.contiguous();
  const at::Tensor c_prev_c = c_prev.contiguous();
  at::Tensor h = at::empty_like(c_prev_c);
  at::Tensor c = at::empty_like(c_prev_c);
  at::Tensor act = at::empty_like(gates_c);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gates.scalar_type(), "lstm_cell_fwd_cpu", [&] {
    const scalar_t* g = gates_c.const_data_ptr<scalar_t>();
    const scalar_t* cp = c_prev_c.const_data_ptr<scalar_t>();
    scalar_t* a = act.mutable_data_ptr<scalar_t>();
    scalar_t* cc = c.mutable_data_ptr<scalar_t>();
    scalar_t* hh = h.mutable_data_ptr<scalar_t>();
    const int64_t H = s.H;
    parallel_rows(s.B, H, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        lstm_fwd_row<scalar_t>(H, g + b * 4 * H, nullptr, a + b * 4 * H, cp + b * H, cc + b * H,
                               nullptr, hh + b * H, nullptr);
      }
    });
  });
  return {h, c, act};
}

std::tuple<at::Tensor, at::Tensor> lstm_cell_bwd_cpu(const at::Tensor& grad_h,
                                                     const at::Tensor& grad_c,
                                                     const at::Tensor& act,
                                                     const at::Tensor& c_prev,
                                                     const at::Tensor& c) {
  const CellShape s = check_cell_bwd_args(grad_h, grad_c, act, c_prev, c);
  check_device_type(act, c10::DeviceType::CPU, "act");
  const at::Tensor gh = grad_h.contiguous(), gc = grad_c.contiguous(), a = act.contiguous(),
                   cp = c_prev.contiguous(), cc = c.contiguous();
  at::Tensor grad_gates = at::empty_like(a);
  at::Tensor grad_c_prev = at::empty_like(cp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, act.scalar_type(), "lstm_cell_bwd_cpu", [&] {
    const int64_t H = s.H;
    const scalar_t* ghp = gh.const_data_ptr<scalar_t>();
    const scalar_t* gcp = gc.const_data_ptr<scalar_t>();
    const scalar_t* ap = a.const_data_ptr<scalar_t>();
    const scalar_t* cpp = cp.const_data_ptr<scalar_t>();
    const scalar_t* ccp = cc.const_data_ptr<scalar_t>();
    scalar_t* dg = grad_gates.mutable_data_ptr<scalar_t>();
    scalar_t* dcp = grad_c_prev.mutable_data_ptr<scalar_t>();
    parallel_rows(s.B, H, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        lstm_bwd_row<scalar_t>(H, ghp + b * H, nullptr, gcp + b * H, ap + b * 4 * H, cpp + b * H,
                               ccp + b * H, dg + b * 4 * H, dcp + b * H);
      }
    });
  });
  return {grad_gates, grad_c_prev};
}

}  // namespace CPU_CAPABILITY
}  // namespace fusedlstm::cpu
