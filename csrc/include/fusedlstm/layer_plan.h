// The layer plan: where every step of one layer and direction lives, built
// once per layer call on the host and read by every backend (the CPU and
// CUDA host loops here; the device kernels and the Python backends through
// the [T, 4] int64 table that fusedlstm::layer_plan returns).
//
// A layer's per-step tensors are viewed as 2-D, [rows, *]: dense input
// [T, B, *] has B rows per step at row t * B; packed input [N, *]
// (PackedSequence's layout, N = sum(batch_sizes)) has batch_sizes[t] rows at
// row sum(batch_sizes[:t]). Row b of a step is sequence b.
//
// The plan has one StepPlan per step, in processing order: entry k is the
// step processed k-th (step t = k forward, t = T - 1 - k reverse).
//   offset       first row of the step
//   rows         rows taking part in the step (batch_sizes[t], or B)
//   continuing   rows b < continuing continue from the step processed just
//                before (entry k - 1): their h_prev / c_prev are that step's
//                rows. The others (b >= continuing) take part for the first
//                time and start from h0[b] / c0[b]. 0 for k = 0.
//   prev_offset  first row of the step processed before (0 for k = 0)
// Because batch_sizes is non-increasing, forward continuing = rows (a
// sequence that ends simply stops); reverse continuing = the previous
// entry's rows (sequences start as the loop walks back over them).
//
// Only host code builds plans. StepPlan is a plain struct of four int64, the
// same layout as one row of the table, so device code can read the table as
// StepPlan[T].
#pragma once

#include <cstdint>
#include <vector>

namespace fusedlstm {

struct StepPlan {
  int64_t offset;
  int64_t rows;
  int64_t continuing;
  int64_t prev_offset;
};
static_assert(sizeof(StepPlan) == 4 * sizeof(int64_t), "StepPlan is one row of the [T, 4] table");

// The plan of a layer with T steps and batch B. batch_sizes: T entries
// (packed input; already checked: batch_sizes[0] == B, positive,
// non-increasing) or nullptr (dense input: B rows in every step).
inline std::vector<StepPlan> build_layer_plan(const int64_t* batch_sizes, int64_t T, int64_t B,
                                              bool reverse) {
  std::vector<int64_t> offset(T);
  int64_t row = 0;
  for (int64_t t = 0; t < T; ++t) {
    offset[t] = row;
    row += batch_sizes ? batch_sizes[t] : B;
  }
  std::vector<StepPlan> plan(T);
  for (int64_t k = 0; k < T; ++k) {
    const int64_t t = reverse ? T - 1 - k : k;
    const int64_t rows = batch_sizes ? batch_sizes[t] : B;
    StepPlan& s = plan[k];
    s.offset = offset[t];
    s.rows = rows;
    if (k == 0) {
      s.continuing = 0;
      s.prev_offset = 0;
    } else {
      const StepPlan& prev = plan[k - 1];
      s.continuing = rows < prev.rows ? rows : prev.rows;
      s.prev_offset = prev.offset;
    }
  }
  return plan;
}

// Rows of all steps together (N packed, T * B dense).
inline int64_t plan_rows(const std::vector<StepPlan>& plan) {
  int64_t n = 0;
  for (const StepPlan& s : plan) n += s.rows;
  return n;
}

}  // namespace fusedlstm
