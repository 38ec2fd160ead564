// The persistent kernels run by the host context (persistent_host.h): what
// the tests call instead of a launch. No torch, no CUDA toolkit.
#pragma once

#include "persistent_bwd.h"
#include "persistent_fwd.h"
#include "persistent_host.h"

namespace fusedlstm::persistent {

// Clusters of a launch: one per group of NB batch rows.
inline int clusters_for(int64_t B, int NB) { return int((B + NB - 1) / NB); }

// Every batch group of the layer, one after another (first_group is 0);
// `grid`: the grid tier (p.grid's buffers set, counters zero).
template <typename Num>
void emulate_forward(const FwdParams<Num>& p, bool grid, const HostOptions& options) {
  const int groups = clusters_for(p.plan.B, p.part.NB);
  const size_t smem = fwd_smem<Num>(p.part, grid).total;
  run_on_host(groups, p.part.S, smem, options, [&](HostContext& ctx) {
    if (grid) {
      forward_cta<Num, true>(ctx, p);
    } else {
      forward_cta<Num, false>(ctx, p);
    }
  });
}

template <typename Num>
void emulate_backward(const BwdParams<Num>& p, bool grid, const HostOptions& options) {
  const int groups = clusters_for(p.plan.B, p.part.NB);
  const size_t smem = bwd_smem<Num>(p.part, grid).total;
  run_on_host(groups, p.part.S, smem, options, [&](HostContext& ctx) {
    if (grid) {
      backward_cta<Num, true>(ctx, p);
    } else {
      backward_cta<Num, false>(ctx, p);
    }
  });
}

}  // namespace fusedlstm::persistent
