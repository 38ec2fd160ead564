// The persistent kernels run by the host context (persistent_host.h): what
// the tests call instead of a launch. No torch, no CUDA toolkit.
#pragma once

#include "persistent_bwd.h"
#include "persistent_fwd.h"
#include "persistent_host.h"

namespace fusedlstm::persistent {

// Clusters of a launch: one per group of NB batch rows.
inline int clusters_for(int64_t B, int NB) { return int((B + NB - 1) / NB); }

template <typename Num>
void emulate_forward(const FwdParams<Num>& p, const HostOptions& options) {
  run_on_host(clusters_for(p.plan.B, p.part.NB), p.part.S, fwd_smem<Num>(p.part).total, options,
              [&](HostContext& ctx) { forward_cta<Num>(ctx, p); });
}

template <typename Num>
void emulate_backward(const BwdParams<Num>& p, const HostOptions& options) {
  run_on_host(clusters_for(p.plan.B, p.part.NB), p.part.S, bwd_smem<Num>(p.part).total, options,
              [&](HostContext& ctx) { backward_cta<Num>(ctx, p); });
}

}  // namespace fusedlstm::persistent
