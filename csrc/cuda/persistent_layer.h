// The layer ops on the persistent kernels (either tier), for any way of running them: the
// op's tensors in, the op contract's tensors out (csrc/ops.cpp:
// lstm_layer_fwd / lstm_layer_bwd), with `launch(params, shape)` doing the
// work: a cluster launch on the GPU (persistent_layer_cuda.cpp) or the host
// emulation (persistent_emulation_ops.cpp, for the tests). Host code on
// ATen; the arguments have been checked (fusedlstm/checks.h).
//
// Everything the kernel touches is allocated here, before the launch; the
// weight gradients are single GEMMs after it (at::mm, on the GPU cuBLAS with
// the user's precision settings, as in the per-step path).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <optional>
#include <tuple>
#include <vector>

#include "fusedlstm/layer_plan.h"
#include "persistent_bwd.h"
#include "persistent_fwd.h"
#include "persistent_tier.h"

namespace fusedlstm::persistent {

using FwdResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using BwdResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The sizes of one layer call and its step plan (host copy).
struct LayerCall {
  int64_t T = 0, B = 0, H = 0, P = 0, rows = 0;
  bool proj = false, packed = false, reverse = false;
  std::vector<StepPlan> plan;

  // Per-step tensor shape for `width` features: [T, B, width] or [N, width].
  std::vector<int64_t> shape(int64_t width) const {
    if (packed) return {rows, width};
    return {T, B, width};
  }
};

// `steps`: x_proj (forward) or acts (backward), whose first dimension is T
// for dense input.
inline LayerCall layer_call(const at::Tensor& steps, const at::Tensor& w_hh, const at::Tensor& c0,
                            const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& batch_sizes,
                            bool reverse) {
  LayerCall c;
  c.B = c0.size(0);
  c.H = c0.size(1);
  c.P = w_hh.size(1);
  c.proj = w_hr.has_value();
  c.packed = batch_sizes.has_value();
  c.reverse = reverse;
  std::vector<int64_t> sizes;
  if (c.packed) {
    const at::Tensor bs = batch_sizes->contiguous();
    sizes.assign(bs.const_data_ptr<int64_t>(), bs.const_data_ptr<int64_t>() + bs.numel());
    c.T = bs.numel();
  } else {
    c.T = steps.size(0);
  }
  c.plan = build_layer_plan(c.packed ? sizes.data() : nullptr, c.T, c.B, reverse);
  c.rows = plan_rows(c.plan);
  return c;
}

// Bytes of the elements of `dtype` (0: a type the kernels do not take).
inline int element_bytes(at::ScalarType dtype) {
  return dtype == at::kFloat ? 4 : dtype == at::kBFloat16 || dtype == at::kHalf ? 2 : 0;
}

// f(Num{}) for the number format of `dtype`.
template <typename F>
decltype(auto) with_number_format(at::ScalarType dtype, F&& f) {
  TORCH_CHECK(element_bytes(dtype) != 0, "fusedlstm: the persistent kernels take float32, bfloat16 or float16, got ",
              dtype);
  if (dtype == at::kFloat) return f(F32{});
  if (dtype == at::kBFloat16) return f(BF16{});
  return f(F16{});
}

template <typename Num>
const typename Num::storage* elements(const at::Tensor& t) {
  static_assert(sizeof(typename Num::storage) == 4 || sizeof(typename Num::storage) == 2);
  TORCH_CHECK(t.is_contiguous() && t.element_size() == int64_t(sizeof(typename Num::storage)),
              "fusedlstm: persistent kernel argument of unexpected layout");
  return static_cast<const typename Num::storage*>(t.const_data_ptr());
}

template <typename Num>
typename Num::storage* mutable_elements(at::Tensor& t) {
  return const_cast<typename Num::storage*>(elements<Num>(t));
}

// The grid tier's global buffers (persistent_layout.h: GridBuffers) for
// `shape`, allocated here with the op's other tensors; none for the cluster
// tier. The tensors own the memory; `buffers` points into them.
template <typename Num>
struct GridMemory {
  at::Tensor counters, h, hfull, shares, dh_out;
  GridBuffers<typename Num::storage> buffers;

  GridMemory(const ClusterShape& shape, Direction dir, const at::TensorOptions& opts) {
    if (!shape.grid) return;
    const GridSizes n = grid_sizes(shape.part, shape.clusters);
    counters = at::zeros({shape.clusters}, opts.dtype(at::kLong));
    buffers.counters = reinterpret_cast<Counter*>(counters.mutable_data_ptr<int64_t>());
    if (dir == Direction::kForward) {
      h = at::empty({2, int64_t(n.h)}, opts);
      buffers.h0 = mutable_elements<Num>(h);
      buffers.h1 = buffers.h0 + n.h;
      hfull = at::empty({int64_t(n.hfull)}, opts);
      buffers.hfull = shape.part.proj ? mutable_elements<Num>(hfull) : nullptr;
    } else {
      shares = at::empty({2, int64_t(n.shares)}, opts.dtype(at::kFloat));
      buffers.shares0 = shares.mutable_data_ptr<float>();
      buffers.shares1 = buffers.shares0 + n.shares;
      dh_out = at::empty({int64_t(n.dh_out)}, opts);
      buffers.dh_out = shape.part.proj ? mutable_elements<Num>(dh_out) : nullptr;
    }
  }
};

template <typename Num>
const typename Num::storage* optional_elements(const at::Tensor& t) {
  return t.defined() ? elements<Num>(t) : nullptr;
}

// lstm_layer_fwd for `call` in cluster shape `shape`; `table`: the plan as
// the kernel reads it (device or host memory), null for dense input.
template <typename Num, typename Launch>
FwdResult layer_fwd(const Launch& launch, const ClusterShape& shape, const LayerCall& call, const StepPlan* table,
                    const at::Tensor& x_proj, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
                    const std::optional<at::Tensor>& w_hr, bool save) {
  const int64_t H = call.H, P = call.P, G = 4 * H;
  const auto opts = x_proj.options();
  const at::Tensor xp = x_proj.contiguous(), w = w_hh.contiguous(), h0c = h0.contiguous(), c0c = c0.contiguous();
  const at::Tensor wr = call.proj ? w_hr->contiguous() : at::Tensor();
  at::Tensor output = at::empty({call.rows, P}, opts), h_n = at::empty({call.B, P}, opts);
  at::Tensor c_n = at::empty({call.B, H}, opts);
  at::Tensor acts = at::empty({save ? call.rows : 0, G}, opts), cells = at::empty({save ? call.rows : 0, H}, opts);
  at::Tensor h_raw = at::empty({save && call.proj ? call.rows : 0, H}, opts);
  GridMemory<Num> grid(shape, Direction::kForward, opts);
  FwdParams<Num> p;
  p.part = shape.part;
  p.grid = grid.buffers;
  p.plan = PlanView{table, call.T, call.B, call.reverse};
  p.save = save;
  p.x_proj = elements<Num>(xp);
  p.w_hh = elements<Num>(w);
  p.w_hr = optional_elements<Num>(wr);
  p.h0 = elements<Num>(h0c);
  p.c0 = elements<Num>(c0c);
  p.output = mutable_elements<Num>(output);
  p.h_n = mutable_elements<Num>(h_n);
  p.c_n = mutable_elements<Num>(c_n);
  p.acts = save ? mutable_elements<Num>(acts) : nullptr;
  p.cells = save ? mutable_elements<Num>(cells) : nullptr;
  p.h_raw = save && call.proj ? mutable_elements<Num>(h_raw) : nullptr;
  launch(p, shape);
  if (!save) return {output.view(call.shape(P)), h_n, c_n, at::empty({0}, opts), at::empty({0}, opts),
                     at::empty({0}, opts)};
  return {output.view(call.shape(P)), h_n, c_n, acts.view(call.shape(G)), cells.view(call.shape(H)),
          call.proj ? h_raw.view(call.shape(H)) : at::empty({0}, opts)};
}

// lstm_layer_bwd for `call` in cluster shape `shape` (as layer_fwd).
template <typename Num, typename Launch>
BwdResult layer_bwd(const Launch& launch, const ClusterShape& shape, const LayerCall& call, const StepPlan* table,
                    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
                    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& w_hh, const at::Tensor& h0,
                    const at::Tensor& c0, const std::optional<at::Tensor>& w_hr, const at::Tensor& output,
                    const at::Tensor& acts, const at::Tensor& cells, const at::Tensor& h_raw) {
  const int64_t H = call.H, P = call.P, G = 4 * H;
  const auto opts = acts.options();
  auto dense = [](const std::optional<at::Tensor>& t) { return t.has_value() ? t->contiguous() : at::Tensor(); };
  const at::Tensor go = dense(grad_output), ghn = dense(grad_h_n), gcn = dense(grad_c_n);
  const at::Tensor w = w_hh.contiguous(), wr = dense(w_hr), h0c = h0.contiguous(), c0c = c0.contiguous();
  const at::Tensor out = output.contiguous(), a = acts.contiguous(), c = cells.contiguous();
  at::Tensor grad_x = at::empty({call.rows, G}, opts), grad_h0 = at::empty({call.B, P}, opts);
  at::Tensor grad_c0 = at::empty({call.B, H}, opts), h_prev = at::empty({call.rows, P}, opts);
  at::Tensor dh_out = at::empty({call.proj ? call.rows : 0, P}, opts);
  GridMemory<Num> grid(shape, Direction::kBackward, opts);
  BwdParams<Num> p;
  p.part = shape.part;
  p.grid = grid.buffers;
  p.plan = PlanView{table, call.T, call.B, call.reverse};
  p.grad_output = optional_elements<Num>(go);
  p.grad_h_n = optional_elements<Num>(ghn);
  p.grad_c_n = optional_elements<Num>(gcn);
  p.w_hh = elements<Num>(w);
  p.w_hr = optional_elements<Num>(wr);
  p.h0 = elements<Num>(h0c);
  p.c0 = elements<Num>(c0c);
  p.output = elements<Num>(out);
  p.acts = elements<Num>(a);
  p.cells = elements<Num>(c);
  p.grad_x = mutable_elements<Num>(grad_x);
  p.grad_h0 = mutable_elements<Num>(grad_h0);
  p.grad_c0 = mutable_elements<Num>(grad_c0);
  p.h_prev = mutable_elements<Num>(h_prev);
  p.dh_out = call.proj ? mutable_elements<Num>(dh_out) : nullptr;
  launch(p, shape);
  at::Tensor grad_w_hh = at::mm(grad_x.t(), h_prev);  // [4H, P]
  at::Tensor grad_w_hr = call.proj ? at::mm(dh_out.t(), h_raw.contiguous().view({call.rows, H}))  // [P, H]
                                   : at::empty({0}, opts);
  return {grad_x.view(call.shape(G)), grad_w_hh, grad_h0, grad_c0, grad_w_hr};
}

}  // namespace fusedlstm::persistent
