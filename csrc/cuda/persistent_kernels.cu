// The cluster-resident LSTM kernels: the step code of persistent_fwd.h and
// persistent_bwd.h on the device context (persistent_device.cuh), one
// instantiation per number format. No torch: the compile gate
// (cmake/persistent.cmake) builds this file alone for sm_90.
//
// Launch: a 1-D grid of clusters * S CTAs in clusters of S (consecutive
// CTAs), kThreads threads and all of the dynamic shared memory a CTA gets;
// one CTA per SM (__launch_bounds__(kThreads, 1)).
//
// Built into an extension for several architectures (e.g. 8.0 and 9.0),
// the kernels are stubs below sm_90, which has no clusters; the tier
// selection never launches them there.
//
// Compile gate figures (tests/cpp/persistent_compile_gate.py; nvcc 13.0,
// -O3 -arch=sm_90; measured by compiling, never run on a GPU): registers per
// thread x 256 threads, no stack frame, no spills, no static shared memory
// (the dynamic allocation is persistent_layout.h's, sized by the tier):
//   forward   float32 162 (41,472)  bfloat16 168 (43,008)  float16 166 (42,496)
//   backward  float32 192 (49,152)  bfloat16 116 (29,696)  float16 114 (29,184)
// of 65,536 registers per SM. In the SASS, each cluster barrier is
// MEMBAR.ALL.GPU + UCGABAR_ARV + UCGABAR_WAIT + CCTL.IVALL: the release
// semantics of barrier.cluster.arrive also order global memory at GPU scope,
// which the exchange does not need. A lead to measure on a GPU: stores that
// complete on the receiver's mbarrier (st.async ... mbarrier::complete_tx)
// order the DSMEM exchange without that fence.
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

template <typename Num>
__global__ void __launch_bounds__(kThreads, 1) persistent_forward_kernel(const __grid_constant__ FwdParams<Num> p) {
  extern __shared__ __align__(16) unsigned char smem[];
  FUSEDLSTM_PERSISTENT_BODY(DeviceContext ctx(smem); forward_cta<Num>(ctx, p));
}

template <typename Num>
__global__ void __launch_bounds__(kThreads, 1) persistent_backward_kernel(const __grid_constant__ BwdParams<Num> p) {
  extern __shared__ __align__(16) unsigned char smem[];
  FUSEDLSTM_PERSISTENT_BODY(DeviceContext ctx(smem); backward_cta<Num>(ctx, p));
}

namespace {

// The launch configuration of `shape`; `attribute` must outlive its use.
cudaLaunchConfig_t launch_config(const ClusterShape& shape, cudaStream_t stream, cudaLaunchAttribute* attribute) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(unsigned(shape.clusters * shape.part.S), 1, 1);
  config.blockDim = dim3(kThreads, 1, 1);
  config.dynamicSmemBytes = shape.smem_bytes;
  config.stream = stream;
  attribute->id = cudaLaunchAttributeClusterDimension;
  attribute->val.clusterDim.x = unsigned(shape.part.S);
  attribute->val.clusterDim.y = 1;
  attribute->val.clusterDim.z = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  return config;
}

// The kernel's attributes, set once per kernel and device: all the dynamic
// shared memory a CTA can have, and clusters beyond the portable 8. Not per
// launch, so that nothing but the launch itself happens during graph capture.
template <typename Kernel>
cudaError_t prepare(Kernel kernel) {
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
  if (e == cudaSuccess) e = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  if (e == cudaSuccess) prepared.insert(key);
  return e;
}

template <typename Kernel>
int active_clusters(Kernel kernel, const ClusterShape& shape, cudaError_t* error) {
  cudaLaunchAttribute attribute;
  const cudaLaunchConfig_t config = launch_config(shape, nullptr, &attribute);
  int clusters = 0;
  cudaError_t e = prepare(kernel);
  if (e == cudaSuccess) e = cudaOccupancyMaxActiveClusters(&clusters, kernel, &config);
  if (error) *error = e;
  return e == cudaSuccess ? clusters : 0;
}

template <typename Kernel, typename Params>
cudaError_t launch(Kernel kernel, const Params& params, const ClusterShape& shape, cudaStream_t stream) {
  cudaLaunchAttribute attribute;
  const cudaLaunchConfig_t config = launch_config(shape, stream, &attribute);
  const cudaError_t e = prepare(kernel);
  if (e != cudaSuccess) return e;
  return cudaLaunchKernelEx(&config, kernel, params);
}

}  // namespace

template <typename Num>
int max_active_clusters(Direction dir, const ClusterShape& shape, cudaError_t* error) {
  return dir == Direction::kForward ? active_clusters(persistent_forward_kernel<Num>, shape, error)
                                    : active_clusters(persistent_backward_kernel<Num>, shape, error);
}

template <typename Num>
cudaError_t launch_forward(const FwdParams<Num>& params, const ClusterShape& shape, cudaStream_t stream) {
  return launch(persistent_forward_kernel<Num>, params, shape, stream);
}

template <typename Num>
cudaError_t launch_backward(const BwdParams<Num>& params, const ClusterShape& shape, cudaStream_t stream) {
  return launch(persistent_backward_kernel<Num>, params, shape, stream);
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
