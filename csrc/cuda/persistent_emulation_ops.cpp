// The persistent kernels run by the host emulation on CPU tensors, as ops,
// so that the Python tests compare them with the CPU backend and the
// float64 oracle (tests/test_persistent.py). Test hooks, not part of the op
// contract: a namespace of their own, fusedlstm_persistent.
//   emulate_layer_fwd / emulate_layer_bwd: lstm_layer_fwd / lstm_layer_bwd's
//     arguments plus the shape (CTAs per batch group, batch rows per group)
//     and the tier (grid: exchange through global memory and a counter
//     barrier; else a thread-block cluster), same results
#include <torch/library.h>

#include <string>

#include "fusedlstm/checks.h"
#include "persistent_emulation.h"
#include "persistent_layer.h"

namespace fusedlstm::persistent {
namespace {

ClusterShape emulated_shape(const LayerCall& call, at::ScalarType dtype, int64_t cluster_size,
                            int64_t rows_per_cluster, bool grid, Direction dir) {
  TORCH_CHECK(element_bytes(dtype) != 0, "fusedlstm: the persistent kernels take float32, bfloat16 or float16, got ",
              dtype);
  const int most = grid ? 1024 : kMaxCluster;
  TORCH_CHECK(cluster_size >= 1 && cluster_size <= most, "fusedlstm: cluster_size must be in 1..", most,
              ", got ", cluster_size);
  TORCH_CHECK(rows_per_cluster >= 8 && rows_per_cluster <= 8 * kMaxNTiles && rows_per_cluster % 8 == 0,
              "fusedlstm: rows_per_cluster must be 8, 16, 24 or 32, got ", rows_per_cluster);
  ClusterShape shape;
  shape.part = make_partition(int(call.H), int(call.P), call.proj, int(cluster_size), int(rows_per_cluster),
                              element_bytes(dtype));
  TORCH_CHECK(shape.part.U <= kMaxUnits, "fusedlstm: ", call.H, " hidden units over ", cluster_size,
              " CTAs is more than ", kMaxUnits, " per CTA");
  shape.clusters = clusters_for(call.B, int(rows_per_cluster));
  shape.smem_bytes = smem_bytes(shape.part, dir, grid);
  shape.grid = grid;
  shape.concurrent = 1;
  return shape;
}

FwdResult emulate_layer_fwd(const at::Tensor& x_proj, const at::Tensor& w_hh, const at::Tensor& h0,
                            const at::Tensor& c0, const std::optional<at::Tensor>& w_hr,
                            const std::optional<at::Tensor>& batch_sizes, bool reverse, bool save_for_backward,
                            int64_t cluster_size, int64_t rows_per_cluster, bool grid) {
  check_layer_args(x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse);
  check_device_type(x_proj, c10::DeviceType::CPU, "x_proj");
  const LayerCall call = layer_call(x_proj, w_hh, c0, w_hr, batch_sizes, reverse);
  const ClusterShape shape = emulated_shape(call, x_proj.scalar_type(), cluster_size, rows_per_cluster, grid,
                                            Direction::kForward);
  return with_number_format(x_proj.scalar_type(), [&](auto num) {
    using Num = decltype(num);
    auto run = [](const FwdParams<Num>& p, const ClusterShape& s) { emulate_forward(p, s.grid, HostOptions{}); };
    return layer_fwd<Num>(run, shape, call, call.packed ? call.plan.data() : nullptr, x_proj, w_hh, h0, c0, w_hr,
                          save_for_backward);
  });
}

BwdResult emulate_layer_bwd(const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
                            const std::optional<at::Tensor>& grad_c_n, const at::Tensor& w_hh, const at::Tensor& h0,
                            const at::Tensor& c0, const std::optional<at::Tensor>& w_hr,
                            const std::optional<at::Tensor>& batch_sizes, bool reverse, const at::Tensor& output,
                            const at::Tensor& acts, const at::Tensor& cells, const at::Tensor& h_raw,
                            int64_t cluster_size, int64_t rows_per_cluster, bool grid) {
  check_layer_bwd_args(grad_output, grad_h_n, grad_c_n, w_hh, h0, c0, w_hr, batch_sizes, reverse, output, acts, cells,
                       h_raw);
  check_device_type(acts, c10::DeviceType::CPU, "acts");
  const LayerCall call = layer_call(acts, w_hh, c0, w_hr, batch_sizes, reverse);
  const ClusterShape shape = emulated_shape(call, acts.scalar_type(), cluster_size, rows_per_cluster, grid,
                                            Direction::kBackward);
  return with_number_format(acts.scalar_type(), [&](auto num) {
    using Num = decltype(num);
    auto run = [](const BwdParams<Num>& p, const ClusterShape& s) { emulate_backward(p, s.grid, HostOptions{}); };
    return layer_bwd<Num>(run, shape, call, call.packed ? call.plan.data() : nullptr, grad_output, grad_h_n,
                          grad_c_n, w_hh, h0, c0, w_hr, output, acts, cells, h_raw);
  });
}

}  // namespace
}  // namespace fusedlstm::persistent

TORCH_LIBRARY(fusedlstm_persistent, m) {
  m.def(
      "emulate_layer_fwd(Tensor x_proj, Tensor w_hh, Tensor h0, Tensor c0, Tensor? w_hr, Tensor? batch_sizes,"
      " bool reverse, bool save_for_backward, int cluster_size, int rows_per_cluster, bool grid=False)"
      " -> (Tensor output, Tensor h_n, Tensor c_n, Tensor acts, Tensor cells, Tensor h_raw)");
  m.def(
      "emulate_layer_bwd(Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, Tensor w_hh, Tensor h0, Tensor c0,"
      " Tensor? w_hr, Tensor? batch_sizes, bool reverse, Tensor output, Tensor acts, Tensor cells, Tensor h_raw,"
      " int cluster_size, int rows_per_cluster, bool grid=False)"
      " -> (Tensor grad_x_proj, Tensor grad_w_hh, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_hr)");
}

TORCH_LIBRARY_IMPL(fusedlstm_persistent, CPU, m) {
  m.impl("emulate_layer_fwd", &fusedlstm::persistent::emulate_layer_fwd);
  m.impl("emulate_layer_bwd", &fusedlstm::persistent::emulate_layer_bwd);
}
