// Argument checks and the sizes and plan of a layer call, shared by the CPU
// and CUDA implementations of the op contract and by fusedlstm::layer_plan
// (host code only). Every failed check
// raises a c10::Error (RuntimeError in Python) naming the argument as the
// caller passed it, what was expected and what came. The rules and messages
// are fusedlstm/checks.py's, word for word (the Python checker of the Triton
// ops, the reference and the fake rules); tests/test_errors.py runs one table
// of bad arguments through every implementation and requires the same
// message. Sizes: the weights set H and P, the data input sets T and B, and
// the states are checked against them (see checks.py).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <c10/util/irange.h>

#include <optional>
#include <string>
#include <vector>

#include "fusedlstm/layer_plan.h"

namespace fusedlstm {

// Python's name of a dtype ("torch.float32"), as the Python checker prints it.
inline std::string dtype_name(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

inline void check_dim(const at::Tensor& x, int64_t dim, const char* name) {
  TORCH_CHECK(x.dim() == dim, "fusedlstm: ", name, " must be a ", dim, "-D tensor, got ", x.dim(),
              "-D of shape ", x.sizes());
}

inline void check_shape(const at::Tensor& x, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(x.sizes() == shape, "fusedlstm: ", name, " must have shape ", shape, ", got ",
              x.sizes());
}

inline void check_like(const at::Tensor& x, const at::Tensor& ref, const char* name,
                       const char* ref_name) {
  TORCH_CHECK(x.scalar_type() == ref.scalar_type(), "fusedlstm: ", name, " must have dtype ",
              dtype_name(ref.scalar_type()), " like ", ref_name, ", got ",
              dtype_name(x.scalar_type()));
  TORCH_CHECK(x.device() == ref.device(), "fusedlstm: ", name, " must be on ", ref.device(),
              " like ", ref_name, ", got ", x.device());
}

inline void check_floating(const at::Tensor& x, const char* name) {
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
              "fusedlstm: ", name, " must be float32, float64, float16 or bfloat16, got ",
              dtype_name(t));
}

inline void check_device_type(const at::Tensor& x, c10::DeviceType type, const char* name) {
  TORCH_CHECK(x.device().type() == type, "fusedlstm: ", name, " must be a ", type,
              " tensor, got a tensor on ", x.device());
}

// Sizes of a cell step, from lstm_cell_fwd's arguments.
struct CellShape {
  int64_t B, H;
};

// gates [B, 4H], c_prev [B, H]: gates sets B, c_prev sets H. `gates_name` is
// what the caller calls gates (lstm_cell_bwd's act).
inline CellShape check_cell_fwd_args(const at::Tensor& gates, const at::Tensor& c_prev,
                                     const char* gates_name = "gates") {
  check_dim(gates, 2, gates_name);
  check_dim(c_prev, 2, "c_prev");
  check_floating(gates, gates_name);
  check_like(c_prev, gates, "c_prev", gates_name);
  const int64_t B = gates.size(0), H = c_prev.size(1);
  check_shape(c_prev, {B, H}, "c_prev");
  check_shape(gates, {B, 4 * H}, gates_name);
  return {B, H};
}

inline CellShape check_cell_bwd_args(const at::Tensor& grad_h, const at::Tensor& grad_c,
                                     const at::Tensor& act, const at::Tensor& c_prev,
                                     const at::Tensor& c) {
  const CellShape s = check_cell_fwd_args(act, c_prev, "act");
  for (const auto& [x, name] : {std::pair<const at::Tensor&, const char*>{grad_h, "grad_h"},
                                {grad_c, "grad_c"}, {c, "c"}}) {
    check_like(x, act, name, "act");
    check_shape(x, {s.B, s.H}, name);
  }
  return s;
}

// The values of batch_sizes (packed input), checked: a non-empty 1-D int64
// CPU tensor, positive and non-increasing.
inline std::vector<int64_t> check_batch_sizes(const at::Tensor& bs) {
  TORCH_CHECK(bs.dim() == 1 && bs.scalar_type() == at::kLong && bs.device().is_cpu(),
              "fusedlstm: batch_sizes must be a 1-D int64 CPU tensor, got ", bs.dim(), "-D ",
              dtype_name(bs.scalar_type()), " on ", bs.device());
  const int64_t T = bs.size(0);
  TORCH_CHECK(T > 0, "fusedlstm: batch_sizes must not be empty");
  const at::Tensor bsc = bs.contiguous();
  const int64_t* p = bsc.const_data_ptr<int64_t>();
  std::vector<int64_t> sizes(p, p + T);
  for (const auto t : c10::irange(T)) {
    TORCH_CHECK(sizes[t] > 0 && (t == 0 || sizes[t] <= sizes[t - 1]),
                "fusedlstm: batch_sizes must be positive and non-increasing, got ",
                at::IntArrayRef(sizes));
  }
  return sizes;
}

// batch_sizes[0], the batch size of packed input, against that of the states.
inline void check_first_batch_size(int64_t first, int64_t B) {
  TORCH_CHECK(first == B, "fusedlstm: batch_sizes[0] (", first,
              ") must equal the batch size of h0 and c0 (", B, ")");
}

// The sizes of one layer call and where its steps live. Per-step tensors are
// viewed as 2-D, [rows, *]; `plan` has one entry per step in processing order
// (layer_plan.h), the one description of the steps that the backends read.
struct LayerGeometry {
  int64_t T = 0, B = 0, H = 0, P = 0, rows = 0;
  bool packed = false;
  std::vector<StepPlan> plan;

  // Per-step tensor shape for `width` features: [T, B, width] or [N, width].
  std::vector<int64_t> shape(int64_t width) const {
    if (packed) return {rows, width};
    return {T, B, width};
  }
};

// lstm_layer_fwd's tensors. The weights set H and P (w_hh [4H, P], w_hr
// [P, H]), x_proj sets T and B (batch_sizes, with packed input), the states
// are checked against them. `input_name` is what the caller calls x_proj
// (lstm_layer_bwd's acts).
inline LayerGeometry check_layer_args(const at::Tensor& x_proj, const at::Tensor& w_hh,
                                      const at::Tensor& h0, const at::Tensor& c0,
                                      const std::optional<at::Tensor>& w_hr,
                                      const std::optional<at::Tensor>& batch_sizes,
                                      bool reverse, const char* input_name = "x_proj") {
  LayerGeometry g;
  g.packed = batch_sizes.has_value();
  check_floating(x_proj, input_name);
  check_dim(w_hh, 2, "w_hh");
  check_dim(h0, 2, "h0");
  check_dim(c0, 2, "c0");
  if (w_hr.has_value()) check_dim(*w_hr, 2, "w_hr");
  check_like(w_hh, x_proj, "w_hh", input_name);
  check_like(h0, x_proj, "h0", input_name);
  check_like(c0, x_proj, "c0", input_name);
  if (w_hr.has_value()) check_like(*w_hr, x_proj, "w_hr", input_name);
  const int64_t G = w_hh.size(0);
  g.P = w_hh.size(1);
  TORCH_CHECK(G > 0 && G % 4 == 0, "fusedlstm: w_hh must be [4H, P] with H > 0, got shape ",
              w_hh.sizes());
  g.H = G / 4;
  if (w_hr.has_value()) {
    check_shape(*w_hr, {g.P, g.H}, "w_hr");
  } else {
    TORCH_CHECK(g.P == g.H, "fusedlstm: without w_hr, w_hh must be [4H, H] = [", 4 * g.H, ", ",
                g.H, "], got ", w_hh.sizes());
  }
  if (!g.packed) {
    TORCH_CHECK(x_proj.dim() == 3, "fusedlstm: ", input_name, " must be [T, B, 4H] (or [N, 4H] "
                "with batch_sizes), got shape ", x_proj.sizes());
    g.T = x_proj.size(0);
    g.B = x_proj.size(1);
    TORCH_CHECK(g.T > 0, "fusedlstm: expected sequence length to be larger than 0, got ",
                input_name, " of shape ", x_proj.sizes());
    g.plan = build_layer_plan(nullptr, g.T, g.B, reverse);
  } else {
    TORCH_CHECK(x_proj.dim() == 2, "fusedlstm: with batch_sizes, ", input_name, " must be packed "
                "[N, 4H], got shape ", x_proj.sizes());
    const std::vector<int64_t> sizes = check_batch_sizes(*batch_sizes);
    g.T = static_cast<int64_t>(sizes.size());
    g.B = sizes[0];
    // When h0 and c0 disagree, their own shape check below says so.
    if (h0.size(0) == c0.size(0)) check_first_batch_size(g.B, c0.size(0));
    g.plan = build_layer_plan(sizes.data(), g.T, g.B, reverse);
  }
  g.rows = plan_rows(g.plan);
  check_shape(h0, {g.B, g.P}, "h0");
  check_shape(c0, {g.B, g.H}, "c0");
  if (g.packed) {
    check_shape(x_proj, {g.rows, 4 * g.H}, input_name);
  } else {
    check_shape(x_proj, {g.T, g.B, 4 * g.H}, input_name);
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
  TORCH_CHECK(!(acts.dim() == 1 && acts.size(0) == 0), "fusedlstm: acts is empty (was the "
              "forward run with save_for_backward=True?)");
  LayerGeometry g = check_layer_args(acts, w_hh, h0, c0, w_hr, batch_sizes, reverse, "acts");
  check_like(output, acts, "output", "acts");
  check_like(cells, acts, "cells", "acts");
  if (w_hr.has_value()) {
    check_like(h_raw, acts, "h_raw", "acts");
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
    check_like(*grad_output, acts, "grad_output", "acts");
    check_shape(*grad_output, output.sizes(), "grad_output");
  }
  if (grad_h_n.has_value()) {
    check_like(*grad_h_n, acts, "grad_h_n", "acts");
    check_shape(*grad_h_n, {g.B, g.P}, "grad_h_n");
  }
  if (grad_c_n.has_value()) {
    check_like(*grad_c_n, acts, "grad_c_n", "acts");
    check_shape(*grad_c_n, {g.B, g.H}, "grad_c_n");
  }
  return g;
}

}  // namespace fusedlstm
