// Argument checks and the step layout of a layer, shared by the CPU and CUDA
// implementations of the op contract (host code only). Every failed check
// raises a c10::Error (RuntimeError in Python) naming what was expected and
// what came.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/irange.h>

#include <optional>
#include <vector>

#define FUSEDLSTM_CHECK_DIM(x, d)                                                  \
  TORCH_CHECK((x).dim() == (d), "fusedlstm: " #x " must be a " #d "-D tensor, got ", \
              (x).dim(), "-D of shape ", (x).sizes())

#define FUSEDLSTM_CHECK_SHAPE(x, ...)                                                \
  TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}), "fusedlstm: " #x      \
              " must have shape ", at::IntArrayRef({__VA_ARGS__}), ", got ", (x).sizes())

#define FUSEDLSTM_CHECK_LIKE(x, ref)                                                   \
  do {                                                                                 \
    TORCH_CHECK((x).scalar_type() == (ref).scalar_type(), "fusedlstm: " #x " must have " \
                "dtype ", (ref).scalar_type(), " like " #ref ", got ", (x).scalar_type()); \
    TORCH_CHECK((x).device() == (ref).device(), "fusedlstm: " #x " must be on ",        \
                (ref).device(), " like " #ref ", got ", (x).device());                  \
  } while (0)

namespace fusedlstm {

inline void check_floating(const at::Tensor& x, const char* name) {
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
              "fusedlstm: ", name, " must be float32, float64, float16 or bfloat16, got ", t);
}

inline void check_device_type(const at::Tensor& x, c10::DeviceType type, const char* name) {
  TORCH_CHECK(x.device().type() == type, "fusedlstm: ", name, " must be a ", type,
              " tensor, got a tensor on ", x.device());
}

// Sizes of a cell step, from lstm_cell_fwd's arguments.
struct CellShape {
  int64_t B, H;
};

inline CellShape check_cell_fwd_args(const at::Tensor& gates, const at::Tensor& c_prev) {
  FUSEDLSTM_CHECK_DIM(gates, 2);
  FUSEDLSTM_CHECK_DIM(c_prev, 2);
  check_floating(gates, "gates");
  FUSEDLSTM_CHECK_LIKE(c_prev, gates);
  const int64_t B = c_prev.size(0), H = c_prev.size(1);
  FUSEDLSTM_CHECK_SHAPE(gates, B, 4 * H);
  return {B, H};
}

inline CellShape check_cell_bwd_args(const at::Tensor& grad_h, const at::Tensor& grad_c,
                                     const at::Tensor& act, const at::Tensor& c_prev,
                                     const at::Tensor& c) {
  const CellShape s = check_cell_fwd_args(act, c_prev);
  FUSEDLSTM_CHECK_LIKE(grad_h, c_prev);
  FUSEDLSTM_CHECK_LIKE(grad_c, c_prev);
  FUSEDLSTM_CHECK_LIKE(c, c_prev);
  FUSEDLSTM_CHECK_SHAPE(grad_h, s.B, s.H);
  FUSEDLSTM_CHECK_SHAPE(grad_c, s.B, s.H);
  FUSEDLSTM_CHECK_SHAPE(c, s.B, s.H);
  return s;
}

// Sizes of a whole cell step (lstm_cell_step): batch, input and hidden size.
struct StepShape {
  int64_t B, I, H;
};

inline StepShape check_cell_step_args(const at::Tensor& x, const at::Tensor& h,
                                      const at::Tensor& c, const at::Tensor& w_ih,
                                      const at::Tensor& w_hh,
                                      const std::optional<at::Tensor>& b_ih_opt,
                                      const std::optional<at::Tensor>& b_hh_opt) {
  FUSEDLSTM_CHECK_DIM(x, 2);
  FUSEDLSTM_CHECK_DIM(h, 2);
  FUSEDLSTM_CHECK_DIM(c, 2);
  FUSEDLSTM_CHECK_DIM(w_ih, 2);
  FUSEDLSTM_CHECK_DIM(w_hh, 2);
  check_floating(x, "x");
  FUSEDLSTM_CHECK_LIKE(h, x);
  FUSEDLSTM_CHECK_LIKE(c, x);
  FUSEDLSTM_CHECK_LIKE(w_ih, x);
  FUSEDLSTM_CHECK_LIKE(w_hh, x);
  const int64_t B = x.size(0), I = x.size(1), H = h.size(1);
  FUSEDLSTM_CHECK_SHAPE(h, B, H);
  FUSEDLSTM_CHECK_SHAPE(c, B, H);
  FUSEDLSTM_CHECK_SHAPE(w_ih, 4 * H, I);
  FUSEDLSTM_CHECK_SHAPE(w_hh, 4 * H, H);
  if (b_ih_opt.has_value()) {
    const at::Tensor& b_ih = *b_ih_opt;
    FUSEDLSTM_CHECK_LIKE(b_ih, x);
    FUSEDLSTM_CHECK_SHAPE(b_ih, 4 * H);
  }
  if (b_hh_opt.has_value()) {
    const at::Tensor& b_hh = *b_hh_opt;
    FUSEDLSTM_CHECK_LIKE(b_hh, x);
    FUSEDLSTM_CHECK_SHAPE(b_hh, 4 * H);
  }
  return {B, I, H};
}

// Where every step of one layer lives. Per-step tensors are viewed as 2-D,
// [rows, *]: rows of step t start at row offset[t] and step t has
// batch_sizes[t] of them (dense input: B rows at offset t * B).
struct LayerGeometry {
  int64_t T = 0, B = 0, H = 0, P = 0, rows = 0;
  bool packed = false, reverse = false;
  std::vector<int64_t> batch_sizes, offset;

  // The k-th step in processing order.
  int64_t step(int64_t k) const { return reverse ? T - 1 - k : k; }
  // Rows of step t that continue a row of the step processed just before it
  // (0 for the first processed step). Rows beyond this start from h0 / c0.
  int64_t rows_from_previous(int64_t k) const {
    if (k == 0) return 0;
    return std::min(batch_sizes[step(k)], batch_sizes[step(k - 1)]);
  }
  // Per-step tensor shape for `width` features: [T, B, width] or [N, width].
  std::vector<int64_t> shape(int64_t width) const {
    if (packed) return {rows, width};
    return {T, B, width};
  }
};

inline LayerGeometry check_layer_args(const at::Tensor& x_proj, const at::Tensor& w_hh,
                                      const at::Tensor& h0, const at::Tensor& c0,
                                      const std::optional<at::Tensor>& w_hr,
                                      const std::optional<at::Tensor>& batch_sizes,
                                      bool reverse) {
  LayerGeometry g;
  g.reverse = reverse;
  g.packed = batch_sizes.has_value();
  check_floating(x_proj, "x_proj");
  FUSEDLSTM_CHECK_DIM(w_hh, 2);
  FUSEDLSTM_CHECK_DIM(h0, 2);
  FUSEDLSTM_CHECK_DIM(c0, 2);
  FUSEDLSTM_CHECK_LIKE(w_hh, x_proj);
  FUSEDLSTM_CHECK_LIKE(h0, x_proj);
  FUSEDLSTM_CHECK_LIKE(c0, x_proj);
  g.B = c0.size(0);
  g.H = c0.size(1);
  g.P = w_hh.size(1);
  TORCH_CHECK(g.H > 0, "fusedlstm: hidden size (c0.size(1)) must be positive, got ", g.H);
  FUSEDLSTM_CHECK_SHAPE(w_hh, 4 * g.H, g.P);
  if (w_hr.has_value()) {
    FUSEDLSTM_CHECK_DIM(*w_hr, 2);
    FUSEDLSTM_CHECK_LIKE(*w_hr, x_proj);
    FUSEDLSTM_CHECK_SHAPE(*w_hr, g.P, g.H);
  } else {
    TORCH_CHECK(g.P == g.H, "fusedlstm: without w_hr, w_hh must be [4H, H] = [", 4 * g.H, ", ",
                g.H, "], got ", w_hh.sizes());
  }
  FUSEDLSTM_CHECK_SHAPE(h0, g.B, g.P);
  if (!g.packed) {
    TORCH_CHECK(x_proj.dim() == 3, "fusedlstm: x_proj must be [T, B, 4H] (or [N, 4H] with "
                "batch_sizes), got shape ", x_proj.sizes());
    g.T = x_proj.size(0);
    TORCH_CHECK(g.T > 0, "fusedlstm: expected sequence length to be larger than 0, got ",
                x_proj.sizes());
    FUSEDLSTM_CHECK_SHAPE(x_proj, g.T, g.B, 4 * g.H);
    g.rows = g.T * g.B;
    g.batch_sizes.assign(g.T, g.B);
  } else {
    const at::Tensor& bs = *batch_sizes;
    TORCH_CHECK(x_proj.dim() == 2, "fusedlstm: with batch_sizes, x_proj must be packed [N, 4H],"
                " got shape ", x_proj.sizes());
    TORCH_CHECK(bs.dim() == 1 && bs.scalar_type() == at::kLong && bs.device().is_cpu(),
                "fusedlstm: batch_sizes must be a 1-D int64 CPU tensor, got ", bs.dim(),
                "-D ", bs.scalar_type(), " on ", bs.device());
    g.T = bs.size(0);
    TORCH_CHECK(g.T > 0, "fusedlstm: batch_sizes must not be empty");
    const at::Tensor bsc = bs.contiguous();
    const int64_t* p = bsc.const_data_ptr<int64_t>();
    g.batch_sizes.assign(p, p + g.T);
    TORCH_CHECK(g.batch_sizes[0] == g.B, "fusedlstm: batch_sizes[0] (", g.batch_sizes[0],
                ") must equal the batch size of h0 and c0 (", g.B, ")");
    for (const auto t : c10::irange(g.T)) {
      TORCH_CHECK(g.batch_sizes[t] > 0 && (t == 0 || g.batch_sizes[t] <= g.batch_sizes[t - 1]),
                  "fusedlstm: batch_sizes must be positive and non-increasing, got ", bs);
      g.rows += g.batch_sizes[t];
    }
    FUSEDLSTM_CHECK_SHAPE(x_proj, g.rows, 4 * g.H);
  }
  g.offset.resize(g.T);
  int64_t row = 0;
  for (const auto t : c10::irange(g.T)) {
    g.offset[t] = row;
    row += g.batch_sizes[t];
  }
  return g;
}

// Checks of lstm_layer_bwd's arguments against the geometry of its forward.
inline LayerGeometry check_layer_bwd_args(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& w_hh, const at::Tensor& h0,
    const at::Tensor& c0, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, const at::Tensor& output,
    const at::Tensor& acts, const at::Tensor& cells, const at::Tensor& h_raw) {
  LayerGeometry g = check_layer_args(acts, w_hh, h0, c0, w_hr, batch_sizes, reverse);
  FUSEDLSTM_CHECK_LIKE(output, acts);
  FUSEDLSTM_CHECK_LIKE(cells, acts);
  if (w_hr.has_value()) {
    FUSEDLSTM_CHECK_LIKE(h_raw, acts);
    TORCH_CHECK(h_raw.sizes() == at::IntArrayRef(g.shape(g.H)), "fusedlstm: with w_hr, h_raw must "
                "have shape ", at::IntArrayRef(g.shape(g.H)), " (lstm_layer_fwd's h_raw), got ",
                h_raw.sizes());
  } else {
    TORCH_CHECK(h_raw.numel() == 0, "fusedlstm: without w_hr, h_raw must be empty (as "
                "lstm_layer_fwd returns it), got shape ", h_raw.sizes());
  }
  TORCH_CHECK(output.sizes() == at::IntArrayRef(g.shape(g.P)), "fusedlstm: output must have "
              "shape ", at::IntArrayRef(g.shape(g.P)), ", got ", output.sizes());
  TORCH_CHECK(cells.sizes() == at::IntArrayRef(g.shape(g.H)), "fusedlstm: cells must have "
              "shape ", at::IntArrayRef(g.shape(g.H)), " (was the forward run with "
              "save_for_backward=True?), got ", cells.sizes());
  if (grad_output.has_value()) {
    FUSEDLSTM_CHECK_LIKE(*grad_output, acts);
    TORCH_CHECK(grad_output->sizes() == output.sizes(), "fusedlstm: grad_output must have "
                "shape ", output.sizes(), ", got ", grad_output->sizes());
  }
  if (grad_h_n.has_value()) {
    FUSEDLSTM_CHECK_LIKE(*grad_h_n, acts);
    FUSEDLSTM_CHECK_SHAPE(*grad_h_n, g.B, g.P);
  }
  if (grad_c_n.has_value()) {
    FUSEDLSTM_CHECK_LIKE(*grad_c_n, acts);
    FUSEDLSTM_CHECK_SHAPE(*grad_c_n, g.B, g.H);
  }
  return g;
}

}  // namespace fusedlstm
