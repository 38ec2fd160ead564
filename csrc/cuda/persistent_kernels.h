// Launching the cluster-resident LSTM kernels (persistent_kernels.cu) from
// host code: raw pointers in FwdParams / BwdParams, a cluster shape from the
// tier selection (persistent_tier.h). No torch; the CUDA runtime API only.
#pragma once

#include <cuda_runtime_api.h>

#include "persistent_bwd.h"
#include "persistent_fwd.h"
#include "persistent_tier.h"

namespace fusedlstm::persistent {

// How many clusters of `shape` the device can hold at once with the
// kernel's resources (cudaOccupancyMaxActiveClusters); 0 means a launch
// would be refused or wait for other work, so the caller falls back.
template <typename Num>
int max_active_clusters(Direction dir, const ClusterShape& shape, cudaError_t* error);

// Launch the kernel on `stream`: shape.clusters clusters of shape.part.S CTAs,
// kThreads threads and shape.smem_bytes of shared memory each. Enqueues only:
// no allocation, no synchronisation (CUDA-graph capture records it).
template <typename Num>
cudaError_t launch_forward(const FwdParams<Num>& params, const ClusterShape& shape, cudaStream_t stream);
template <typename Num>
cudaError_t launch_backward(const BwdParams<Num>& params, const ClusterShape& shape, cudaStream_t stream);

}  // namespace fusedlstm::persistent
