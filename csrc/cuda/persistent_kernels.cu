// The persistent LSTM kernels: the step code of persistent_fwd.h and
// persistent_bwd.h on the device context (persistent_device.cuh), one
// instantiation per number format and tier (cluster, grid). No torch: the
// compile gate (cmake/persistent.cmake) builds this file alone for sm_90.
//
// Launch: a 1-D grid of groups * S CTAs, a batch group on S consecutive
// CTAs (a cluster, or a slice of a cooperative launch), kThreads threads
// and all of the dynamic shared memory a CTA gets; one CTA per SM
// (__launch_bounds__(kThreads, 1)).
//
// Built into an extension for several architectures (e.g. 8.0 and 9.0),
// the kernels are stubs below sm_90, which has no clusters; the tier
// selection never launches them there.
//
// Compile gate figures (tests/cpp/persistent_compile_gate.py; nvcc 13.0,
// -O3 -arch=sm_90; measured by compiling, never run on a GPU): registers per
// thread (x 256 threads), no stack frame, no spills, no static shared memory
// (the dynamic allocation is persistent_layout.h's, sized by the tier):
//                     float32         bfloat16        float16
//   forward cluster   165 (42,240)    184 (47,104)    184 (47,104)
//   forward grid      226 (57,856)    232 (59,392)    228 (58,368)
//   backward cluster  168 (43,008)    115 (29,440)    112 (28,672)
//   backward grid     218 (55,808)    164 (41,984)    164 (41,984)
// of 65,536 registers per SM. The grid tier's generic atomic on the counter
// compiles to a shared-or-global test with both paths (ATOMS.CAST.SPIN,
// ATOM.E.ADD.64.STRONG.GPU); the global one runs. Each cluster barrier is
// MEMBAR.ALL.GPU + UCGABAR_ARV + UCGABAR_WAIT + CCTL.IVALL in the SASS: the
// release semantics of barrier.cluster.arrive also order global memory at
// GPU scope, which the exchange does not need. A lead to measure on a GPU:
// stores that complete on the receiver's mbarrier (st.async ...
// mbarrier::complete_tx) order the DSMEM exchange without that fence.
#include "persistent_kernels.h"

#include <mutex>
#include <set>
#include <utility>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define FUSEDLSTM_PERSISTENT_BODY(...) __trap()
#else
#include "persistent_device.cuh"
#define FUSEDLSTM_PERSISTENT_BODY(...) __VA_ARGS__
#endif

namespace fusedlstm::persistent {

// kGrid: the grid tier (a cooperative launch of groups of S CTAs), else the
// cluster tier (clusters of S CTAs).
template <typename Num, bool kGrid>
__global__ void __launch_bounds__(kThreads, 1) persistent_forward_kernel(const __grid_constant__ FwdParams<Num> p) {
  extern __shared__ __align__(16) unsigned char smem[];
  FUSEDLSTM_PERSISTENT_BODY(
      DeviceContext ctx = DeviceContext::of_tier<kGrid>(smem, p.part.S); forward_cta<Num, kGrid>(ctx, p));
}

template <typename Num, bool kGrid>
__global__ void __launch_bounds__(kThreads, 1) persistent_backward_kernel(const __grid_constant__ BwdParams<Num> p) {
  extern __shared__ __align__(16) unsigned char smem[];
  FUSEDLSTM_PERSISTENT_BODY(
      DeviceContext ctx = DeviceContext::of_tier<kGrid>(smem, p.part.S); backward_cta<Num, kGrid>(ctx, p));
}

namespace {

// The launch configuration of `groups` batch groups of `shape`: clusters of
// S CTAs, or (grid tier) a cooperative launch; `attribute` must outlive its use.
cudaLaunchConfig_t launch_config(const ClusterShape& shape, int groups, cudaStream_t stream,
                                 cudaLaunchAttribute* attribute) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(unsigned(groups * shape.part.S), 1, 1);
  config.blockDim = dim3(kThreads, 1, 1);
  config.dynamicSmemBytes = shape.smem_bytes;
  config.stream = stream;
  if (shape.grid) {
    attribute->id = cudaLaunchAttributeCooperative;
    attribute->val.cooperative = 1;
  } else {
    attribute->id = cudaLaunchAttributeClusterDimension;
    attribute->val.clusterDim.x = unsigned(shape.part.S);
    attribute->val.clusterDim.y = 1;
    attribute->val.clusterDim.z = 1;
  }
  config.attrs = attribute;
  config.numAttrs = 1;
  return config;
}

// The kernel's attributes, set once per kernel and device: all the dynamic
// shared memory a CTA can have, and clusters beyond the portable 8. Not per
// launch, so that nothing but the launch itself happens during graph capture.
template <typename Kernel>
cudaError_t prepare(Kernel kernel, bool grid) {
  static std::mutex mutex;
  static std::set<std::pair<const void*, int>> prepared;
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(reinterpret_cast<const void*>(kernel), device);
  if (prepared.count(key)) return cudaSuccess;
  int smem = 0;
  e = cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e == cudaSuccess) e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e == cudaSuccess && !grid) e = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  if (e == cudaSuccess) prepared.insert(key);
  return e;
}

// Batch groups of `shape` that the device holds at once: clusters
// (cudaOccupancyMaxActiveClusters), or for the grid tier the CTAs it can
// hold at once (blocks per SM x SMs, what a cooperative launch needs) over S.
template <typename Kernel>
int active_groups(Kernel kernel, const ClusterShape& shape, cudaError_t* error) {
  int groups = 0;
  cudaError_t e = prepare(kernel, shape.grid);
  if (e == cudaSuccess && shape.grid) {
    int device = 0, per_sm = 0, sms = 0;
    e = cudaGetDevice(&device);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (e == cudaSuccess) e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, shape.smem_bytes);
    groups = per_sm * sms / shape.part.S;
  } else if (e == cudaSuccess) {
    cudaLaunchAttribute attribute;
    const cudaLaunchConfig_t config = launch_config(shape, shape.clusters, nullptr, &attribute);
    e = cudaOccupancyMaxActiveClusters(&groups, kernel, &config);
  }
  if (error) *error = e;
  return e == cudaSuccess ? groups : 0;
}

// All batch groups of `shape`: one cluster launch, or cooperative launches
// of shape.concurrent groups each, one after another on the stream.
template <typename Kernel, typename Params>
cudaError_t launch(Kernel kernel, const Params& params, const ClusterShape& shape, cudaStream_t stream) {
  cudaError_t e = prepare(kernel, shape.grid);
  const int per_launch = shape.grid ? shape.concurrent : shape.clusters;
  if (e == cudaSuccess && per_launch <= 0) e = cudaErrorInvalidValue;
  for (int first = 0; e == cudaSuccess && first < shape.clusters; first += per_launch) {
    Params part = params;
    part.first_group = first;
    cudaLaunchAttribute attribute;
    const int groups = shape.clusters - first < per_launch ? shape.clusters - first : per_launch;
    const cudaLaunchConfig_t config = launch_config(shape, groups, stream, &attribute);
    e = cudaLaunchKernelEx(&config, kernel, part);
  }
  return e;
}

}  // namespace

template <typename Num>
int max_active_clusters(Direction dir, const ClusterShape& shape, cudaError_t* error) {
  if (shape.grid) {
    return dir == Direction::kForward ? active_groups(persistent_forward_kernel<Num, true>, shape, error)
                                      : active_groups(persistent_backward_kernel<Num, true>, shape, error);
  }
  return dir == Direction::kForward ? active_groups(persistent_forward_kernel<Num, false>, shape, error)
                                    : active_groups(persistent_backward_kernel<Num, false>, shape, error);
}

template <typename Num>
cudaError_t launch_forward(const FwdParams<Num>& params, const ClusterShape& shape, cudaStream_t stream) {
  return shape.grid ? launch(persistent_forward_kernel<Num, true>, params, shape, stream)
                    : launch(persistent_forward_kernel<Num, false>, params, shape, stream);
}

template <typename Num>
cudaError_t launch_backward(const BwdParams<Num>& params, const ClusterShape& shape, cudaStream_t stream) {
  return shape.grid ? launch(persistent_backward_kernel<Num, true>, params, shape, stream)
                    : launch(persistent_backward_kernel<Num, false>, params, shape, stream);
}

#define FUSEDLSTM_PERSISTENT_INSTANTIATE(Num)                                                              \
  template int max_active_clusters<Num>(Direction, const ClusterShape&, cudaError_t*);                    \
  template cudaError_t launch_forward<Num>(const FwdParams<Num>&, const ClusterShape&, cudaStream_t);     \
  template cudaError_t launch_backward<Num>(const BwdParams<Num>&, const ClusterShape&, cudaStream_t);
FUSEDLSTM_PERSISTENT_INSTANTIATE(F32)
FUSEDLSTM_PERSISTENT_INSTANTIATE(BF16)
FUSEDLSTM_PERSISTENT_INSTANTIATE(F16)
#undef FUSEDLSTM_PERSISTENT_INSTANTIATE

}  // namespace fusedlstm::persistent
