// The recurrent weight gradient of a layer, formed the same way by the CPU
// and CUDA backends after their backward loop (host code only):
//
//   grad_w_hh [4H, P] = sum over steps of d_gates^T @ h_prev
//
// where h_prev of row b in plan entry k is output row prev_offset + b when
// b < continuing, else h0[b] (layer_plan.h). Dense input needs no copy: entry
// 0 reads h0 and every later entry all B rows of the entry before it, which
// lie B rows away, so two GEMMs on views cover every step. Packed input
// gathers h_prev into one [rows, P] tensor by a row index into [output; h0],
// built from the plan, and multiplies once.
//
// This is the one way for both devices: the GEMMs and the gather go through
// ATen, on the tensors' device. Gathering h_prev inside the CUDA backward
// kernel instead wrote [rows, P] more elements for dense input too, and on
// the CPU would reach into the cell backward's inner loop.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/mm.h>

#include <algorithm>

#include "fusedlstm/checks.h"
#include "fusedlstm/layer_plan.h"

namespace fusedlstm {

// d_gates: [rows, 4H] (every step's pre-activation gradients); output:
// [rows, P]; h0: [B, P]; all contiguous, on one device.
inline at::Tensor recurrent_weight_grad(const LayerGeometry& g, const at::Tensor& d_gates,
                                        const at::Tensor& output, const at::Tensor& h0) {
  const std::vector<StepPlan>& plan = g.plan;
  if (!g.packed) {
    at::Tensor grad = at::mm(d_gates.narrow(0, plan[0].offset, g.B).t(), h0);
    if (g.T > 1) {
      // Entries 1..T-1 together: every row but entry 0's, each B rows from
      // its predecessor's (after it forward, before it reverse).
      const int64_t d_first = std::min(plan[1].offset, plan.back().offset);
      const int64_t h_first = std::min(plan[1].prev_offset, plan.back().prev_offset);
      const int64_t n = g.rows - g.B;
      grad.addmm_(d_gates.narrow(0, d_first, n).t(), output.narrow(0, h_first, n));
    }
    return grad;
  }
  // The index is written on the host, in pinned memory when it goes to a
  // GPU, so that the host does not wait for the copy.
  at::Tensor index = at::empty({g.rows}, at::TensorOptions().dtype(at::kLong).pinned_memory(output.is_cuda()));
  int64_t* source = index.mutable_data_ptr<int64_t>();  // row of [output; h0] for each row
  for (const StepPlan& s : plan) {
    for (int64_t b = 0; b < s.rows; ++b) {
      source[s.offset + b] = b < s.continuing ? s.prev_offset + b : g.rows + b;
    }
  }
  const at::Tensor h_prev = at::cat({output, h0}).index_select(0, index.to(output.device(), /*non_blocking=*/true));
  return at::mm(d_gates.t(), h_prev);  // [4H, P]
}

}  // namespace fusedlstm
