// One LSTM layer and direction on the CPU: the whole recurrence in C++.
//
// Forward, per step t (rows 0..n-1 of the step, n = batch_sizes[t]):
//   rec[n, 4H]  = h_state[n, P] @ W_hh^T              (GEMM)
//   act, c, h   = gates(x_proj[t] + rec, c_state)      (one fused pass)
//   out[t]      = h @ W_hr^T   (with a projection; else out[t] = h)
// h_state / c_state hold each sequence's latest state, so packed sequences
// that end (forward) or start (reverse) at different steps need no copies.
//
// Backward runs the steps in the opposite order with the fused cell backward
// and one GEMM per step for the recurrent gradient; the weight gradients are
// single GEMMs over all steps after the loop.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include "fusedlstm/checks.h"
#include "lstm_cpu.h"
#include "pointwise_cpu.h"

namespace fusedlstm::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_fwd_cpu(
    const at::Tensor& x_proj, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& batch_sizes,
    bool reverse, bool save_for_backward) {
  const LayerGeometry g = check_layer_args(x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse);
  check_device_type(x_proj, c10::DeviceType::CPU, "x_proj");
  const int64_t H = g.H, P = g.P, G = 4 * H;
  const bool proj = w_hr.has_value();
  const auto opts = x_proj.options();

  const at::Tensor xp = x_proj.contiguous().view({g.rows, G});  // [rows, 4H]
  const at::Tensor w_hh_t = w_hh.t();                            // [P, 4H]
  const at::Tensor w_hr_t = proj ? w_hr->t() : at::Tensor();     // [H, P]
  at::Tensor output = at::empty({g.rows, P}, opts);
  // Gate buffer: every step's activations when saving, else one step's.
  at::Tensor acts = at::empty({save_for_backward ? g.rows : g.B, G}, opts);
  at::Tensor cells = at::empty({save_for_backward ? g.rows : 0, H}, opts);
  at::Tensor h_state = h0.contiguous().clone();  // [B, P]
  at::Tensor c_state = c0.contiguous().clone();  // [B, H]
  at::Tensor h_raw = at::empty({proj ? g.B : 0, H}, opts);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x_proj.scalar_type(), "lstm_layer_fwd_cpu", [&] {
    const scalar_t* xp_p = xp.const_data_ptr<scalar_t>();
    scalar_t* out_p = output.mutable_data_ptr<scalar_t>();
    scalar_t* acts_p = acts.mutable_data_ptr<scalar_t>();
    scalar_t* cells_p = cells.mutable_data_ptr<scalar_t>();
    scalar_t* hs_p = h_state.mutable_data_ptr<scalar_t>();
    scalar_t* cs_p = c_state.mutable_data_ptr<scalar_t>();
    scalar_t* hr_p = h_raw.mutable_data_ptr<scalar_t>();
    for (int64_t k = 0; k < g.T; ++k) {
      const int64_t t = g.step(k), n = g.batch_sizes[t], off = g.offset[t];
      if (n == 0) continue;
      const int64_t gate_row = save_for_backward ? off : 0;
      at::Tensor rec = acts.narrow(0, gate_row, n);
      at::mm_out(rec, h_state.narrow(0, 0, n), w_hh_t);
      parallel_rows(n, H, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          scalar_t* act = acts_p + (gate_row + b) * G;
          scalar_t* h = proj ? hr_p + b * H : out_p + (off + b) * P;
          lstm_fwd_row<scalar_t>(H, xp_p + (off + b) * G, act, act, cs_p + b * H, cs_p + b * H,
                                 save_for_backward ? cells_p + (off + b) * H : nullptr, h,
                                 proj ? nullptr : hs_p + b * P);
        }
      });
      if (proj) {
        at::Tensor out_t = output.narrow(0, off, n);
        at::mm_out(out_t, h_raw.narrow(0, 0, n), w_hr_t);
        h_state.narrow(0, 0, n).copy_(out_t);
      }
    }
  });

  if (!save_for_backward) {
    acts = at::empty({0}, opts);
    cells = at::empty({0}, opts);
  } else {
    acts = acts.view(g.shape(G));
    cells = cells.view(g.shape(H));
  }
  return {output.view(g.shape(P)), h_state, c_state, acts, cells};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_bwd_cpu(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& w_hh, const at::Tensor& h0,
    const at::Tensor& c0, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, const at::Tensor& output,
    const at::Tensor& acts, const at::Tensor& cells) {
  const LayerGeometry g = check_layer_bwd_args(grad_output, grad_h_n, grad_c_n, w_hh, h0, c0,
                                               w_hr, batch_sizes, reverse, output, acts, cells);
  check_device_type(acts, c10::DeviceType::CPU, "acts");
  const int64_t H = g.H, P = g.P, G = 4 * H;
  const bool proj = w_hr.has_value();
  const auto opts = acts.options();

  const at::Tensor acts2 = acts.contiguous().view({g.rows, G});
  const at::Tensor cells2 = cells.contiguous().view({g.rows, H});
  const at::Tensor out2 = output.contiguous().view({g.rows, P});
  const at::Tensor go2 =
      grad_output.has_value() ? grad_output->contiguous().view({g.rows, P}) : at::Tensor();
  const at::Tensor w_hh_c = w_hh.contiguous();  // [4H, P]
  const at::Tensor w_hr_c = proj ? w_hr->contiguous() : at::Tensor();  // [P, H]
  const at::Tensor h0c = h0.contiguous(), c0c = c0.contiguous();

  at::Tensor grad_x = at::empty({g.rows, G}, opts);  // d(pre-activations), every step
  at::Tensor dh_state = grad_h_n.has_value() ? grad_h_n->contiguous().clone()
                                             : at::zeros({g.B, P}, opts);
  at::Tensor dc_state = grad_c_n.has_value() ? grad_c_n->contiguous().clone()
                                             : at::zeros({g.B, H}, opts);
  // With a projection: dL/d(out) of every step (for grad_w_hr) and dL/dh.
  at::Tensor dh_out_all = at::empty({proj ? g.rows : 0, P}, opts);
  at::Tensor dh_raw = at::empty({proj ? g.B : 0, H}, opts);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, acts.scalar_type(), "lstm_layer_bwd_cpu", [&] {
    const scalar_t* acts_p = acts2.const_data_ptr<scalar_t>();
    const scalar_t* cells_p = cells2.const_data_ptr<scalar_t>();
    const scalar_t* go_p = go2.defined() ? go2.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* c0_p = c0c.const_data_ptr<scalar_t>();
    scalar_t* gx_p = grad_x.mutable_data_ptr<scalar_t>();
    scalar_t* dhs_p = dh_state.mutable_data_ptr<scalar_t>();
    scalar_t* dcs_p = dc_state.mutable_data_ptr<scalar_t>();
    scalar_t* dhr_p = dh_raw.mutable_data_ptr<scalar_t>();
    for (int64_t k = g.T - 1; k >= 0; --k) {
      const int64_t t = g.step(k), n = g.batch_sizes[t], off = g.offset[t];
      if (n == 0) continue;
      // c_prev of row b: the previous step's cell, or c0 where b starts here.
      const int64_t from_prev = g.rows_from_previous(k);
      const scalar_t* c_prev_rows = k > 0 ? cells_p + g.offset[g.step(k - 1)] * H : nullptr;
      const scalar_t* dh_a = dhs_p;
      const scalar_t* dh_b = go_p ? go_p + off * P : nullptr;
      if (proj) {
        at::Tensor dh_out = dh_out_all.narrow(0, off, n);
        if (go2.defined()) {
          at::add_out(dh_out, dh_state.narrow(0, 0, n), go2.narrow(0, off, n));
        } else {
          dh_out.copy_(dh_state.narrow(0, 0, n));
        }
        at::Tensor dh_raw_n = dh_raw.narrow(0, 0, n);
        at::mm_out(dh_raw_n, dh_out, w_hr_c);
        dh_a = dhr_p;
        dh_b = nullptr;
      }
      parallel_rows(n, H, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const scalar_t* c_prev = b < from_prev ? c_prev_rows + b * H : c0_p + b * H;
          lstm_bwd_row<scalar_t>(H, dh_a + b * H, dh_b ? dh_b + b * P : nullptr, dcs_p + b * H,
                                 acts_p + (off + b) * G, c_prev, cells_p + (off + b) * H,
                                 gx_p + (off + b) * G, dcs_p + b * H);
        }
      });
      at::Tensor dh_state_n = dh_state.narrow(0, 0, n);
      at::mm_out(dh_state_n, grad_x.narrow(0, off, n), w_hh_c);
    }
  });

  // h_prev of every step, [rows, P]: the previous step's output, or h0.
  at::Tensor h_prev = at::empty({g.rows, P}, opts);
  for (int64_t k = 0; k < g.T; ++k) {
    const int64_t t = g.step(k), n = g.batch_sizes[t], off = g.offset[t];
    const int64_t from_prev = g.rows_from_previous(k);
    if (from_prev > 0) {
      h_prev.narrow(0, off, from_prev).copy_(out2.narrow(0, g.offset[g.step(k - 1)], from_prev));
    }
    if (n > from_prev) {
      h_prev.narrow(0, off + from_prev, n - from_prev).copy_(h0c.narrow(0, from_prev, n - from_prev));
    }
  }
  at::Tensor grad_w_hh = at::mm(grad_x.t(), h_prev);  // [4H, P]
  at::Tensor grad_w_hr = at::empty({0}, opts);
  if (proj) {
    const at::Tensor h_raw_all = acts2.narrow(1, 3 * H, H).mul(cells2.tanh());  // o * tanh(c)
    grad_w_hr = at::mm(dh_out_all.t(), h_raw_all);                          // [P, H]
  }
  return {grad_x.view(g.shape(G)), grad_w_hh, dh_state, dc_state, grad_w_hr};
}

}  // namespace fusedlstm::cpu
