// The layer ops on the persistent kernels, on the GPU: the tier decision
// (persistent_tier.h) from the device's properties, the stream's capture
// state and an occupancy query per cluster shape, then the launch on the
// current stream (persistent_kernels.cu) around persistent_layer.h's
// allocations. Nothing here synchronises with the host; the step table of
// packed input is copied from pinned memory with the stream's other work.
#include "persistent_layer_cuda.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "persistent_kernels.h"
#include "persistent_layer.h"

namespace fusedlstm::persistent {
namespace {

Mode mode_from_environment() {
  const char* value = std::getenv("FUSEDLSTM_PERSISTENT");
  const std::optional<Mode> mode = parse_mode(value);
  TORCH_CHECK(mode.has_value(), "fusedlstm: FUSEDLSTM_PERSISTENT must be 0, 1, require or grid, got '", value,
              "'");
  return *mode;
}

DeviceFacts device_facts(int device) {
  static std::mutex mutex;
  static std::map<int, DeviceFacts> known;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto it = known.find(device);
  if (it != known.end()) return it->second;
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(device);
  int cluster_launch = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&cluster_launch, cudaDevAttrClusterLaunch, device));
  const DeviceFacts facts{prop->major, prop->minor, prop->multiProcessorCount, prop->sharedMemPerBlockOptin,
                          cluster_launch != 0};
  known.emplace(device, facts);
  return facts;
}

// Batch groups of a kernel and shape that fit on the device at once
// (persistent_kernels.h: max_active_clusters), asked once per device and
// shape. An error of the query counts as no room (the per-step path then
// runs) and is cleared.
template <typename Num>
int active_clusters(int device, Direction dir, const ClusterShape& shape) {
  using Key = std::tuple<int, int, bool, int, int, int, size_t>;
  static std::mutex mutex;
  static std::map<Key, int> known;
  const Key key{device, int(dir), shape.grid, shape.part.S, shape.part.NB, shape.part.U, shape.smem_bytes};
  const std::lock_guard<std::mutex> lock(mutex);
  const auto it = known.find(key);
  if (it != known.end()) return it->second;
  cudaError_t error = cudaSuccess;
  const int clusters = max_active_clusters<Num>(dir, shape, &error);
  if (error != cudaSuccess) (void)cudaGetLastError();
  known.emplace(key, clusters);
  return clusters;
}

bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status != cudaStreamCaptureStatusNone;
}

// The decision for this call; an error if FUSEDLSTM_PERSISTENT=require and
// the layer stays on the per-step path.
template <typename Num>
std::optional<ClusterShape> choose(Mode mode, const LayerCall& call, at::ScalarType dtype, int device, Direction dir,
                                   cudaStream_t stream) {
  Situation s;
  s.mode = mode;
  s.device = device_facts(device);
  s.layer = LayerRequest{element_bytes(dtype), call.H, call.P, call.B, call.proj};
  s.direction = dir;
  s.packed = call.packed;
  s.capturing = capturing(stream);
  const Decision d = decide(s, [&](const ClusterShape& shape) { return active_clusters<Num>(device, dir, shape); });
  TORCH_CHECK(d.shape.has_value() || s.mode == Mode::kAuto, "fusedlstm: FUSEDLSTM_PERSISTENT=",
              s.mode == Mode::kGrid ? "grid" : "require", ", but the persistent kernels cannot take this layer (",
              dtype, ", H=", call.H, ", P=", call.P, ", B=", call.B, "): ", d.reason);
  return d.shape;
}

// The step table on the device (packed input); undefined for dense input,
// whose plan the kernel computes.
at::Tensor plan_on_device(const LayerCall& call, const at::Device& device) {
  if (!call.packed) return at::Tensor();
  at::Tensor host = at::empty({call.T, 4}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  std::memcpy(host.mutable_data_ptr<int64_t>(), call.plan.data(), call.plan.size() * sizeof(StepPlan));
  return host.to(device, /*non_blocking=*/true);
}

const StepPlan* table_of(const at::Tensor& plan) {
  return plan.defined() ? static_cast<const StepPlan*>(plan.const_data_ptr()) : nullptr;
}

// FUSEDLSTM_PERSISTENT's mode, or none when this call stays on the per-step
// path before anything is looked at (switched off, or a dtype the kernels
// do not take).
std::optional<Mode> mode_for(at::ScalarType dtype) {
  const Mode mode = mode_from_environment();
  if (mode == Mode::kOff) return std::nullopt;
  if (element_bytes(dtype) != 0) return mode;
  TORCH_CHECK(mode == Mode::kAuto, "fusedlstm: FUSEDLSTM_PERSISTENT=", mode == Mode::kGrid ? "grid" : "require",
              ", but the persistent kernels take float32, bfloat16 or float16, got ", dtype);
  return std::nullopt;
}

}  // namespace

std::optional<FwdResult> try_layer_fwd_cuda(const at::Tensor& x_proj, const at::Tensor& w_hh, const at::Tensor& h0,
                                            const at::Tensor& c0, const std::optional<at::Tensor>& w_hr,
                                            const std::optional<at::Tensor>& batch_sizes, bool reverse,
                                            bool save_for_backward) {
  const std::optional<Mode> mode = mode_for(x_proj.scalar_type());
  if (!mode) return std::nullopt;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const LayerCall call = layer_call(x_proj, w_hh, c0, w_hr, batch_sizes, reverse);
  return with_number_format(x_proj.scalar_type(), [&](auto num) -> std::optional<FwdResult> {
    using Num = decltype(num);
    const std::optional<ClusterShape> shape = choose<Num>(*mode, call, x_proj.scalar_type(), x_proj.get_device(),
                                                          Direction::kForward, stream);
    if (!shape) return std::nullopt;
    const at::Tensor plan = plan_on_device(call, x_proj.device());
    auto launch = [stream](const FwdParams<Num>& p, const ClusterShape& s) {
      C10_CUDA_CHECK(launch_forward<Num>(p, s, stream));
    };
    return layer_fwd<Num>(launch, *shape, call, table_of(plan), x_proj, w_hh, h0, c0, w_hr, save_for_backward);
  });
}

std::optional<BwdResult> try_layer_bwd_cuda(const std::optional<at::Tensor>& grad_output,
                                            const std::optional<at::Tensor>& grad_h_n,
                                            const std::optional<at::Tensor>& grad_c_n, const at::Tensor& w_hh,
                                            const at::Tensor& h0, const at::Tensor& c0,
                                            const std::optional<at::Tensor>& w_hr,
                                            const std::optional<at::Tensor>& batch_sizes, bool reverse,
                                            const at::Tensor& output, const at::Tensor& acts, const at::Tensor& cells,
                                            const at::Tensor& h_raw) {
  const std::optional<Mode> mode = mode_for(acts.scalar_type());
  if (!mode) return std::nullopt;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const LayerCall call = layer_call(acts, w_hh, c0, w_hr, batch_sizes, reverse);
  return with_number_format(acts.scalar_type(), [&](auto num) -> std::optional<BwdResult> {
    using Num = decltype(num);
    const std::optional<ClusterShape> shape = choose<Num>(*mode, call, acts.scalar_type(), acts.get_device(),
                                                          Direction::kBackward, stream);
    if (!shape) return std::nullopt;
    const at::Tensor plan = plan_on_device(call, acts.device());
    auto launch = [stream](const BwdParams<Num>& p, const ClusterShape& s) {
      C10_CUDA_CHECK(launch_backward<Num>(p, s, stream));
    };
    return layer_bwd<Num>(launch, *shape, call, table_of(plan), grad_output, grad_h_n, grad_c_n, w_hh, h0, c0, w_hr,
                          output, acts, cells, h_raw);
  });
}

}  // namespace fusedlstm::persistent
