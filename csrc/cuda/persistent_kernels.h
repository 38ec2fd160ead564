// Launching the cluster-resident LSTM kernels (persistent_kernels.cu) from
// host code: raw pointers in FwdParams / BwdParams, a cluster shape from the
// tier selection (persistent_tier.h). No torch; the CUDA runtime API only.
#pragma once

#include <cuda_runtime_api.h>

#include "persistent_bwd.h"
#include "persistent_fwd.h"
#include "persistent_tier.h"

namespace fusedlstm::persistent {

// How many batch groups of `shape` the device can hold at once with the
// kernel's resources (cudaOccupancyMaxActiveClusters; for the grid tier, the
// co-resident CTAs of a cooperative launch over S); 0 means a launch would
// be refused or wait for other work, so the caller falls back.
template <typename Num>
int max_active_clusters(Direction dir, const ClusterShape& shape, cudaError_t* error);

// Launch the kernel on `stream`: shape.clusters batch groups of
// shape.part.S CTAs, kThreads threads and shape.smem_bytes of shared memory
// each; the grid tier in launches of shape.concurrent groups. Enqueues only:
// no allocation, no synchronisation (CUDA-graph capture records it). The
// grid tier's buffers (params.grid) must be allocated, its counters zero.
template <typename Num>
cudaError_t launch_forward(const FwdParams<Num>& params, const ClusterShape& shape, cudaStream_t stream);
template <typename Num>
cudaError_t launch_backward(const BwdParams<Num>& params, const ClusterShape& shape, cudaStream_t stream);

}  // namespace fusedlstm::persistent
