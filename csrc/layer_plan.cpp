// fusedlstm::layer_plan: the plan of layer_plan.h as an int64 [T, 4] CPU
// tensor, one StepPlan per row, for the backends that read it outside this
// library (reference.py and the Triton kernels, fusedlstm/plan.py). Host
// code for every dispatch key (CompositeExplicitAutograd), so that it also
// serves batch_sizes = None, a call without tensors.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "fusedlstm/checks.h"
#include "fusedlstm/layer_plan.h"

namespace fusedlstm {
namespace {

at::Tensor layer_plan(const std::optional<at::Tensor>& maybe_batch_sizes, int64_t T, int64_t B,
                      bool reverse) {
  std::vector<int64_t> sizes;
  if (maybe_batch_sizes.has_value()) {
    sizes = check_batch_sizes(*maybe_batch_sizes);
    check_shape(*maybe_batch_sizes, {T}, "batch_sizes");
    check_first_batch_size(sizes[0], B);
  }
  const std::vector<StepPlan> plan =
      build_layer_plan(maybe_batch_sizes.has_value() ? sizes.data() : nullptr, T, B, reverse);
  at::Tensor table = at::empty({T, 4}, at::TensorOptions().dtype(at::kLong));  // [T, 4]
  std::copy(plan.begin(), plan.end(), reinterpret_cast<StepPlan*>(table.mutable_data_ptr<int64_t>()));
  return table;
}

}  // namespace
}  // namespace fusedlstm

TORCH_LIBRARY_IMPL(fusedlstm, CompositeExplicitAutograd, m) {
  m.impl("layer_plan", &fusedlstm::layer_plan);
}
