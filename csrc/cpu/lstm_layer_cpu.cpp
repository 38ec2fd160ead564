// One LSTM layer and direction on the CPU: the whole recurrence in C++.
//
// The steps run in the order of the layer's plan (fusedlstm/layer_plan.h),
// which says where each step's rows are and which continue from the step
// processed before. Forward, per plan entry (rows r < n = its rows):
//   gates[n, 4H] = h_prev[n, P] @ W_hh^T + x_proj[t]        (recurrent_gemm.h)
//   act, c, h    = the gate math of gate_math.h, in the GEMM's epilogue
//   out[t]       = h @ W_hr^T with a projection (a second product), else h
// h_prev of row r is the previous entry's output row (r < continuing), or
// h0[r] where the row starts (reverse packed sequences); c lives in c_state, updated in place,
// in float for half types (as its gradient does in the backward), so that
// rounding does not accumulate over the steps.
//
// Backward runs the steps in the opposite order. Per step, the recurrent
// gradient (d_gates of the step processed after it, @ W_hh) is a product whose
// epilogue runs the fused cell backward; the weight gradients are single GEMMs
// over all steps after the loop (grad_w_hh: weight_gradients.h).
//
// All steps of a layer run inside one thread team (recurrent_gemm.h): each
// thread owns a slice of the hidden units, and a barrier ends each phase.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>

#include "fusedlstm/checks.h"
#include "fusedlstm/layer_plan.h"
#include "fusedlstm/weight_gradients.h"
#include "lstm_cpu.h"
#include "pointwise_cpu.h"
#include "recurrent_gemm.h"

namespace fusedlstm::cpu {
inline namespace CPU_CAPABILITY {  // one copy per SIMD level (lstm_cpu.h)
namespace {

// The row of every sequence b in the step where it starts (entry k with
// continuing <= b < rows: it reads h0[b] and c0[b]) and in the step where it
// ends (the last entry it takes part in: the source of h_n[b]).
at::Tensor first_rows(const LayerGeometry& g) {
  std::vector<int64_t> rows(g.B);
  for (const StepPlan& s : g.plan) {
    for (int64_t b = s.continuing; b < s.rows; ++b) rows[b] = s.offset + b;
  }
  return at::tensor(rows, at::TensorOptions().dtype(at::kLong));
}

at::Tensor last_rows(const LayerGeometry& g) {
  std::vector<int64_t> rows(g.B);
  for (int64_t k = 0; k < g.T; ++k) {
    const StepPlan& s = g.plan[k];
    const int64_t continuing_after = k + 1 < g.T ? g.plan[k + 1].continuing : 0;
    for (int64_t b = continuing_after; b < s.rows; ++b) rows[b] = s.offset + b;
  }
  return at::tensor(rows, at::TensorOptions().dtype(at::kLong));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_fwd_cpu(
    const at::Tensor& x_proj, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& batch_sizes,
    bool reverse, bool save_for_backward) {
  const LayerGeometry g = check_layer_args(x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse);
  check_device_type(x_proj, c10::DeviceType::CPU, "x_proj");
  const int64_t H = g.H, P = g.P, G = 4 * H;
  const bool proj = w_hr.has_value();
  const auto opts = x_proj.options();

  const at::Tensor xp = x_proj.contiguous().view({g.rows, G});
  const at::Tensor w_hh_c = w_hh.contiguous(), h0c = h0.contiguous();
  const at::Tensor w_hr_c = proj ? w_hr->contiguous() : at::Tensor();
  at::Tensor output = at::empty({g.rows, P}, opts);
  at::Tensor acts = at::empty({save_for_backward ? g.rows : 0, G}, opts);
  at::Tensor cells = at::empty({save_for_backward ? g.rows : 0, H}, opts);
  const auto math_dtype = at::toOpMathType(x_proj.scalar_type());
  at::Tensor c_state = c0.to(math_dtype, /*non_blocking=*/false, /*copy=*/true).contiguous();  // [B, H]
  // o * tanh(c), the projection's input: every step's when saving, else one step's.
  at::Tensor h_raw = at::empty({proj ? (save_for_backward ? g.rows : g.B) : 0, H}, opts);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x_proj.scalar_type(), "lstm_layer_fwd_cpu", [&] {
    using IO = VecIO<scalar_t>;
    using Vec = typename IO::Vec;
    constexpr int64_t U = Vec::size();
    const auto gates_w = pack_gate_interleaved<scalar_t>(w_hh_c, H);  // K = P
    const auto proj_w = proj ? pack_transposed<scalar_t>(w_hr_c) : Panels<math_type<scalar_t>>();
    const scalar_t* xp_p = xp.const_data_ptr<scalar_t>();
    const scalar_t* h0_p = h0c.const_data_ptr<scalar_t>();
    scalar_t* out_p = output.mutable_data_ptr<scalar_t>();
    scalar_t* acts_p = save_for_backward ? acts.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* cells_p = save_for_backward ? cells.mutable_data_ptr<scalar_t>() : nullptr;
    using MathIO = VecIO<math_type<scalar_t>>;
    math_type<scalar_t>* cs_p = c_state.mutable_data_ptr<math_type<scalar_t>>();
    scalar_t* hr_p = proj ? h_raw.mutable_data_ptr<scalar_t>() : nullptr;

    const int threads = team_size(g.B * G * P, std::max(gates_w.panels, proj_w.panels));
    run_team(threads, [&](const Team& team) {
      const auto gate_panels = team.share(gates_w.panels);
      const auto proj_panels = team.share(proj_w.panels);
      for (int64_t k = 0; k < g.T; ++k) {
        const StepPlan& s = g.plan[k];
        const int64_t n = s.rows, off = s.offset;
        const RowSource<scalar_t> h_prev{out_p + s.prev_offset * P, P, s.continuing, h0_p, P};
        const scalar_t* x = xp_p + off * G;
        scalar_t* hr_step = proj ? hr_p + (save_for_backward ? off : 0) * H : nullptr;
        scalar_t* h_dst = proj ? hr_step : out_p + off * P;
        const int64_t h_ld = proj ? H : P;
        const int64_t u0 = gate_panels.first * U, u1 = std::min(H, gate_panels.second * U);
        for (int64_t gate = 0; gate < 4; ++gate) {
          prefetch_block<Access::kRead>(x + gate * H, n, G, u0, u1);
          if (save_for_backward) prefetch_block<Access::kWrite>(acts_p + off * G + gate * H, n, G, u0, u1);
        }
        if (save_for_backward) prefetch_block<Access::kWrite>(cells_p + off * H, n, H, u0, u1);
        prefetch_block<Access::kWrite>(h_dst, n, h_ld, u0, u1);
        // Panel p holds units [p*U, p*U + U); acc[r][gate] are their gates.
        multiply_rows(h_prev, n, gates_w, gate_panels,
                      [&](int64_t p, int64_t r0, int64_t mr, const Accumulators<scalar_t>* acc) {
          const int64_t u = p * U, count = std::min<int64_t>(U, H - u);
          for (int64_t i = 0; i < mr; ++i) {
            const int64_t r = r0 + i;
            const scalar_t* xr = x + r * G + u;
            const Gates<Vec> a = activate_gates(
                acc[i][0] + IO::load(xr, count), acc[i][1] + IO::load(xr + H, count),
                acc[i][2] + IO::load(xr + 2 * H, count), acc[i][3] + IO::load(xr + 3 * H, count));
            math_type<scalar_t>* cs = cs_p + r * H + u;
            const Vec c = cell_state(a, MathIO::load(cs, count));
            MathIO::store(cs, c, count);
            IO::store(h_dst + r * h_ld + u, hidden_state(a, c), count);
            if (save_for_backward) {
              IO::store(cells_p + (off + r) * H + u, c, count);
              store_gates(acts_p + (off + r) * G + u, H, a, count);
            }
          }
        });
        team.barrier();
        if (proj) {
          const RowSource<scalar_t> raw{hr_step, H, n, hr_step, H};
          multiply_rows(raw, n, proj_w, proj_panels,
                        [&](int64_t p, int64_t r0, int64_t mr, const Accumulators<scalar_t>* acc) {
            for (int64_t i = 0; i < mr; ++i)
              for (int64_t j = 0; j < kPanelVecs; ++j) {
                const int64_t col = p * proj_w.cols + j * U;
                if (col < P) IO::store(out_p + (off + r0 + i) * P + col, acc[i][j], std::min(U, P - col));
              }
          });
          team.barrier();
        }
      }
    });
  });

  at::Tensor h_n = output.index_select(0, last_rows(g));
  if (save_for_backward) {
    acts = acts.view(g.shape(G));
    cells = cells.view(g.shape(H));
    h_raw = proj ? h_raw.view(g.shape(H)) : at::empty({0}, opts);
  } else {
    acts = at::empty({0}, opts);
    cells = at::empty({0}, opts);
    h_raw = at::empty({0}, opts);
  }
  return {output.view(g.shape(P)), h_n, c_state.to(x_proj.scalar_type()), acts, cells, h_raw};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_bwd_cpu(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& w_hh, const at::Tensor& h0,
    const at::Tensor& c0, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, const at::Tensor& output,
    const at::Tensor& acts, const at::Tensor& cells, const at::Tensor& h_raw) {
  const LayerGeometry g = check_layer_bwd_args(grad_output, grad_h_n, grad_c_n, w_hh, h0, c0,
                                               w_hr, batch_sizes, reverse, output, acts, cells,
                                               h_raw);
  check_device_type(acts, c10::DeviceType::CPU, "acts");
  const int64_t H = g.H, P = g.P, G = 4 * H;
  const bool proj = w_hr.has_value();
  const auto opts = acts.options();

  const at::Tensor acts2 = acts.contiguous().view({g.rows, G});
  const at::Tensor cells2 = cells.contiguous().view({g.rows, H});
  const at::Tensor out2 = output.contiguous().view({g.rows, P});
  const at::Tensor go2 =
      grad_output.has_value() ? grad_output->contiguous().view({g.rows, P}) : at::Tensor();
  const at::Tensor ghn = grad_h_n.has_value() ? grad_h_n->contiguous() : at::Tensor();
  const at::Tensor w_hh_c = w_hh.contiguous();  // [4H, P]
  const at::Tensor w_hr_c = proj ? w_hr->contiguous() : at::Tensor();  // [P, H]
  const at::Tensor h0c = h0.contiguous(), c0c = c0.contiguous();

  at::Tensor grad_x = at::empty({g.rows, G}, opts);  // d(pre-activations) of every step
  const auto math_dtype = at::toOpMathType(acts.scalar_type());
  at::Tensor dc_state = grad_c_n.has_value()  // [B, H], float for half types
      ? grad_c_n->to(math_dtype, /*non_blocking=*/false, /*copy=*/true).contiguous()
      : at::zeros({g.B, H}, opts.dtype(math_dtype));
  // With a projection, dL/d(out) of every step (for grad_w_hr and dL/dh).
  at::Tensor dh_out = at::empty({proj ? g.rows : 0, P}, opts);
  at::Tensor zero_row = at::zeros({G}, opts);  // A row of rows that get no recurrent gradient

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, acts.scalar_type(), "lstm_layer_bwd_cpu", [&] {
    using IO = VecIO<scalar_t>;
    using Vec = typename IO::Vec;
    constexpr int64_t W = Vec::size();
    // dL/dh_prev = d_gates @ W_hh: B = W_hh [4H, P]; with a projection, then
    // dL/dh = dL/d(out) @ W_hr: B = W_hr [P, H].
    const auto hh = pack_plain<scalar_t>(w_hh_c);
    const auto hr = proj ? pack_plain<scalar_t>(w_hr_c) : Panels<math_type<scalar_t>>();
    const auto& cell_w = proj ? hr : hh;  // the product whose columns are hidden units
    const scalar_t* acts_p = acts2.const_data_ptr<scalar_t>();
    const scalar_t* cells_p = cells2.const_data_ptr<scalar_t>();
    const scalar_t* go_p = go2.defined() ? go2.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* ghn_p = ghn.defined() ? ghn.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* c0_p = c0c.const_data_ptr<scalar_t>();
    const scalar_t* zero_p = zero_row.const_data_ptr<scalar_t>();
    scalar_t* gx_p = grad_x.mutable_data_ptr<scalar_t>();
    using MathIO = VecIO<math_type<scalar_t>>;
    math_type<scalar_t>* dcs_p = dc_state.mutable_data_ptr<math_type<scalar_t>>();
    scalar_t* dho_p = proj ? dh_out.mutable_data_ptr<scalar_t>() : nullptr;

    const int threads = team_size(g.B * G * P, std::max(hh.panels, hr.panels));
    run_team(threads, [&](const Team& team) {
      const auto unit_panels = team.share(cell_w.panels);
      const auto out_panels = team.share(hh.panels);
      for (int64_t k = g.T - 1; k >= 0; --k) {
        const StepPlan& s = g.plan[k];
        const int64_t n = s.rows, off = s.offset;
        // Rows that continue into the step processed after this one get
        // dL/dh from its d_gates; the others (their last step) from grad_h_n.
        const int64_t continuing = k + 1 < g.T ? g.plan[k + 1].continuing : 0;
        const int64_t off_next = k + 1 < g.T ? g.plan[k + 1].offset : 0;
        const RowSource<scalar_t> d_next{gx_p + off_next * G, G, continuing, zero_p, 0};
        // c_prev of row r: the previous step's cell, or c0 where r starts.
        const int64_t from_prev = s.continuing;
        const scalar_t* cells_prev = k > 0 ? cells_p + s.prev_offset * H : nullptr;
        const int64_t u0 = std::min(H, unit_panels.first * cell_w.cols);
        const int64_t u1 = std::min(H, unit_panels.second * cell_w.cols);
        for (int64_t gate = 0; gate < 4; ++gate) {
          prefetch_block<Access::kRead>(acts_p + off * G + gate * H, n, G, u0, u1);
          prefetch_block<Access::kWrite>(gx_p + off * G + gate * H, n, G, u0, u1);
        }
        prefetch_block<Access::kRead>(cells_p + off * H, n, H, u0, u1);
        if (cells_prev) prefetch_block<Access::kRead>(cells_prev, from_prev, H, u0, u1);
        if (!proj && go_p) prefetch_block<Access::kRead>(go_p + off * P, n, P, u0, u1);
        // dL/dh reaching the cell: acc (+ grad_output and grad_h_n without a
        // projection; those went into dL/d(out) with one).
        auto cell_backward = [&](int64_t p, int64_t r0, int64_t mr, const Accumulators<scalar_t>* acc) {
          for (int64_t i = 0; i < mr; ++i) {
            const int64_t r = r0 + i;
            for (int64_t j = 0; j < kPanelVecs; ++j) {
              const int64_t u = p * cell_w.cols + j * W;
              if (u >= H) break;
              const int64_t count = std::min(W, H - u);
              Vec dh = acc[i][j];
              if (!proj && go_p) dh = dh + IO::load(go_p + (off + r) * P + u, count);
              if (!proj && ghn_p && r >= continuing) dh = dh + IO::load(ghn_p + r * P + u, count);
              const Gates<Vec> a = load_gates(acts_p + (off + r) * G + u, H, count);
              const scalar_t* c_prev = r < from_prev ? cells_prev + r * H + u : c0_p + r * H + u;
              math_type<scalar_t>* dc = dcs_p + r * H + u;
              Vec dc_prev;
              const Gates<Vec> d = gates_backward(a, IO::load(c_prev, count),
                                                  IO::load(cells_p + (off + r) * H + u, count), dh,
                                                  MathIO::load(dc, count), dc_prev);
              store_gates(gx_p + (off + r) * G + u, H, d, count);
              MathIO::store(dc, dc_prev, count);
            }
          }
        };
        if (proj) {
          // dL/d(out) = grad_output + d_gates_next @ W_hh (+ grad_h_n where the row ends).
          multiply_rows(d_next, n, hh, out_panels,
                        [&](int64_t p, int64_t r0, int64_t mr, const Accumulators<scalar_t>* acc) {
            for (int64_t i = 0; i < mr; ++i) {
              const int64_t r = r0 + i;
              for (int64_t j = 0; j < kPanelVecs; ++j) {
                const int64_t col = p * hh.cols + j * W;
                if (col >= P) break;
                const int64_t count = std::min(W, P - col);
                Vec v = acc[i][j];
                if (go_p) v = v + IO::load(go_p + (off + r) * P + col, count);
                if (ghn_p && r >= continuing) v = v + IO::load(ghn_p + r * P + col, count);
                IO::store(dho_p + (off + r) * P + col, v, count);
              }
            }
          });
          team.barrier();
          const RowSource<scalar_t> dh_rows{dho_p + off * P, P, n, dho_p, P};
          multiply_rows(dh_rows, n, hr, unit_panels, cell_backward);
        } else {
          multiply_rows(d_next, n, hh, unit_panels, cell_backward);
        }
        team.barrier();
      }
    });
  });

  // dL/dh0 of row b: its first step's d_gates @ W_hh.
  at::Tensor grad_h0 = at::mm(grad_x.index_select(0, first_rows(g)), w_hh_c);  // [B, P]
  at::Tensor grad_w_hh = recurrent_weight_grad(g, grad_x, out2, h0c);         // [4H, P]
  at::Tensor grad_w_hr = at::empty({0}, opts);
  if (proj) {
    grad_w_hr = at::mm(dh_out.t(), h_raw.contiguous().view({g.rows, H}));  // [P, H]
  }
  return {grad_x.view(g.shape(G)), grad_w_hh, grad_h0, dc_state.to(acts.scalar_type()), grad_w_hr};
}

}  // namespace CPU_CAPABILITY
}  // namespace fusedlstm::cpu
