// Which layers the cluster-resident kernels take, and in which shapes:
// a pure function of the layer's sizes and the device's properties, so that
// it is unit-tested without a GPU. The launcher (persistent_layer_cuda.cpp)
// then asks cudaOccupancyMaxActiveClusters about each candidate in turn and
// launches the first that can run; with none, the layer takes the per-step
// path (lstm_layer_cuda.cuh), which serves everything.
//
// Capacity, an estimate (the kernels have not run on a GPU yet): a CTA keeps
// its W_hh slice in shared memory, 8*U*Kh bytes in bfloat16/float16 and about
// 16*U*Kh in float32 (U units per CTA, Kh ~ P), next to the h buffers
// (4*NB*Kh bytes in 16-bit) and, in the backward, the reduce-scatter shares
// (12*S*NB*Up bytes). With 227 KB per CTA (sm_90's opt-in limit) and U <= 64:
//   bfloat16  H = P = 256 at S = 8 (64 KB of weights per CTA), 512 at S = 16
//             (128 KB; the backward then takes NB = 8 or 16 rows per cluster)
//   float32   H = P = 256 at S = 8 (133 KB), 384 at S = 16; not 512 (264 KB)
// Larger layers (blog's H = 1000 and 800, fastrnns' H = 512 in float32) take
// the per-step path until the grid-resident tier exists.
// The preferred cluster size gives each CTA about 32 units: 8 gate tiles,
// one per warp; more CTAs per cluster mean smaller slices (less shared
// memory read per step) but a wider barrier, fewer leave warps idle.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "persistent_layout.h"

namespace fusedlstm::persistent {

enum class Direction { kForward, kBackward };

// What the tier selection needs to know about the device.
struct DeviceFacts {
  int major = 0, minor = 0;     // compute capability
  int sm_count = 0;
  size_t smem_per_block = 0;    // cudaDevAttrMaxSharedMemoryPerBlockOptin
  bool cluster_launch = false;  // cudaDevAttrClusterLaunch
};

// The layer: sizes and the element size (4: float32, 2: bfloat16/float16,
// 0: a type the kernels do not take, e.g. float64).
struct LayerRequest {
  int elem_bytes = 0;
  int64_t H = 0, P = 0, B = 0;
  bool proj = false;
};

// One launch shape: clusters of S CTAs, NB batch rows each.
struct ClusterShape {
  Partition part;
  int clusters = 0;
  size_t smem_bytes = 0;
};

template <typename Num>
size_t smem_bytes(const Partition& part, Direction dir) {
  return dir == Direction::kForward ? fwd_smem<Num>(part).total : bwd_smem<Num>(part).total;
}

inline size_t smem_bytes(const Partition& part, Direction dir) {
  return part.elem_bytes == 4 ? smem_bytes<F32>(part, dir) : smem_bytes<BF16>(part, dir);
}

// The cluster shapes that could run the layer, best first; empty when the
// layer takes the per-step path, with the reason in *why.
inline std::vector<ClusterShape> cluster_candidates(const DeviceFacts& dev, const LayerRequest& layer, Direction dir,
                                                    std::string* why) {
  std::vector<ClusterShape> out;
  auto refuse = [&](const std::string& reason) {
    if (why) *why = reason;
    return out;
  };
  if (dev.major != 9 || dev.minor != 0) return refuse("not an sm_90 device");
  if (!dev.cluster_launch) return refuse("the device cannot launch thread-block clusters");
  if (layer.elem_bytes != 4 && layer.elem_bytes != 2) return refuse("dtype not float32, bfloat16 or float16");
  if (layer.B <= 0) return refuse("empty batch");
  const int64_t most = int64_t(kMaxCluster) * kMaxUnits;
  if (layer.H > most || layer.P > most) return refuse("hidden or output size beyond one cluster");
  const int H = int(layer.H), P = int(layer.P);
  const int preferred = ceil_div(H, 32) < kMaxCluster ? ceil_div(H, 32) : kMaxCluster;
  std::vector<int> sizes;
  for (int S = preferred; S <= kMaxCluster; ++S) sizes.push_back(S);
  for (int S = preferred - 1; S >= 1; --S) sizes.push_back(S);
  const int nb_all = layer.B < 32 ? round_up(int(layer.B), 8) : 32;
  for (int S : sizes) {
    for (int NB = nb_all; NB >= 8; NB -= 8) {
      const Partition part = make_partition(H, P, layer.proj, S, NB, layer.elem_bytes);
      if (part.U > kMaxUnits) break;                       // more units per CTA than its warps hold
      if ((S - 1) * part.U >= H) break;                    // a CTA with padding only
      if (layer.proj && (S - 1) * part.Up >= P) break;     // a CTA with no output columns
      const size_t bytes = smem_bytes(part, dir);
      if (bytes > dev.smem_per_block) continue;            // fewer rows per cluster may fit
      out.push_back(ClusterShape{part, int((layer.B + NB - 1) / NB), bytes});
      break;
    }
  }
  if (out.empty()) return refuse("W_hh does not fit the shared memory of a cluster");
  return out;
}

// FUSEDLSTM_PERSISTENT: "0" keeps every layer on the per-step path, "1" or
// unset lets the selection below decide, "require" makes a layer that the
// persistent kernels cannot take an error (tests use it to know which path
// ran).
enum class Mode { kOff, kAuto, kRequire };

inline std::optional<Mode> parse_mode(const char* value) {
  if (value == nullptr || std::string(value).empty() || std::string(value) == "1") return Mode::kAuto;
  if (std::string(value) == "0") return Mode::kOff;
  if (std::string(value) == "require") return Mode::kRequire;
  return std::nullopt;
}

// Everything the choice depends on besides the occupancy query.
struct Situation {
  Mode mode = Mode::kAuto;
  DeviceFacts device;
  LayerRequest layer;
  Direction direction = Direction::kForward;
  bool packed = false;     // batch_sizes given: the plan table is copied to the device
  bool capturing = false;  // the stream is being captured into a CUDA graph
};

struct Decision {
  std::optional<ClusterShape> shape;  // none: the per-step path
  std::string reason;                 // why not, when none
};

// The tier of one layer call. `active_clusters(shape)` is
// cudaOccupancyMaxActiveClusters for the kernel at that shape (a fake in
// tests): the first candidate with room for at least one cluster is taken,
// so a launch is never attempted that the device would refuse or that could
// only wait for other work to finish.
template <typename ActiveClusters>
Decision decide(const Situation& s, const ActiveClusters& active_clusters) {
  Decision d;
  if (s.mode == Mode::kOff) {
    d.reason = "FUSEDLSTM_PERSISTENT=0";
    return d;
  }
  if (s.packed && s.capturing) {
    // The step table of packed input is copied from the host at each call;
    // a captured copy would replay a host buffer that is gone by then.
    d.reason = "packed input while the stream is being captured";
    return d;
  }
  const std::vector<ClusterShape> candidates = cluster_candidates(s.device, s.layer, s.direction, &d.reason);
  for (const ClusterShape& shape : candidates) {
    if (active_clusters(shape) > 0) {
      d.shape = shape;
      d.reason.clear();
      return d;
    }
  }
  if (!candidates.empty()) d.reason = "no cluster shape fits on the device now (cudaOccupancyMaxActiveClusters is 0)";
  return d;
}

}  // namespace fusedlstm::persistent
