// Which layers the persistent kernels take, in which tier and shape: a
// pure function of the layer's sizes and the device's properties, so that
// it is unit-tested without a GPU. The launcher (persistent_layer_cuda.cpp)
// then asks the occupancy API about each candidate in turn and launches the
// first that can run; with none, the layer takes the per-step path
// (lstm_layer_cuda.cuh), which serves everything.
//
// Capacity, an estimate (the kernels have not run on a GPU yet): a CTA keeps
// its W_hh slice in shared memory, 8*U*Kh bytes in bfloat16/float16 and about
// 16*U*Kh in float32 (U units per CTA, Kh ~ P), next to the h buffers
// (4*NB*Kh bytes in 16-bit) and, in the backward, the reduce-scatter shares
// (12*S*NB*Up bytes). With 227 KB per CTA (sm_90's opt-in limit) and U <= 64:
//   bfloat16  H = P = 256 at S = 8 (64 KB of weights per CTA), 512 at S = 16
//             (128 KB; the backward then takes NB = 8 or 16 rows per cluster)
//   float32   H = P = 256 at S = 8 (133 KB), 384 at S = 16; not 512 (264 KB)
// The preferred cluster size gives each CTA about 32 units: 8 gate tiles,
// one per warp; more CTAs per cluster mean smaller slices (less shared
// memory read per step) but a wider barrier, fewer leave warps idle.
//
// Larger layers (blog's H = 1000 and 800, fastrnns' H = 512 in float32) take
// the grid tier: up to one CTA per SM in a cooperative launch, h through
// global memory (L2), a counter as the barrier. A batch group then takes
// the fewest CTAs whose slices fit (fewest arrivals per barrier, least L2
// traffic), and as many rows as fit (fewest groups); groups that cannot be
// co-resident run in consecutive launches. Estimates for the H200 (132 SMs):
// blog H = 1000 bfloat16 forward, B = 64: 2 groups of 32 rows x 63 CTAs
// (U = 16, ~129 KB of weights each), one launch; the same in float32 needs
// 4 groups of 16 rows x 125 CTAs (U = 8): 4 launches in a row. Per step, the
// h of every CTA crosses L2 once (NB*Kh values), and the backward's shares
// NB*Kh floats per CTA: 128 KB each for NB = 32, H = 1000, 17 MB per step
// over 132 CTAs, ~3-4 us at 4-5 TB/s (L2, an estimate).
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

// One launch shape: `clusters` batch groups of NB rows, each on S CTAs,
// as thread-block clusters (cluster tier) or in a cooperative launch that
// takes `concurrent` groups at a time (grid tier; set by the launcher from
// the occupancy query).
struct ClusterShape {
  Partition part;
  int clusters = 0;
  size_t smem_bytes = 0;
  bool grid = false;
  int concurrent = 0;
};

template <typename Num>
size_t smem_bytes(const Partition& part, Direction dir, bool grid) {
  return dir == Direction::kForward ? fwd_smem<Num>(part, grid).total : bwd_smem<Num>(part, grid).total;
}

inline size_t smem_bytes(const Partition& part, Direction dir, bool grid) {
  return part.elem_bytes == 4 ? smem_bytes<F32>(part, dir, grid) : smem_bytes<BF16>(part, dir, grid);
}

// Whether S CTAs of `part` each hold some real units (and output columns).
inline bool no_idle_cta(const Partition& part) {
  return (part.S - 1) * part.U < part.H && (!part.proj || (part.S - 1) * part.Up < part.P);
}

// The checks that come before any shape; empty when the layer may take a
// persistent kernel.
inline std::string refusal(const DeviceFacts& dev, const LayerRequest& layer) {
  if (dev.major != 9 || dev.minor != 0) return "not an sm_90 device";
  if (layer.elem_bytes != 4 && layer.elem_bytes != 2) return "dtype not float32, bfloat16 or float16";
  if (layer.B <= 0) return "empty batch";
  return "";
}

// No candidate, and why.
inline std::vector<ClusterShape> none(std::string* why, const std::string& reason) {
  if (why) *why = reason;
  return {};
}

// Batch rows per group: all of B up to 32, in 8-row n-tiles.
inline int most_rows(const LayerRequest& layer) { return layer.B < 32 ? round_up(int(layer.B), 8) : 32; }

// The cluster-tier shapes that could run the layer, best first; empty
// when none does, with the reason in *why.
inline std::vector<ClusterShape> cluster_candidates(const DeviceFacts& dev, const LayerRequest& layer, Direction dir,
                                                    std::string* why) {
  std::vector<ClusterShape> out;
  auto refuse = [why](const std::string& reason) { return none(why, reason); };
  if (const std::string r = refusal(dev, layer); !r.empty()) return refuse(r);
  if (!dev.cluster_launch) return refuse("the device cannot launch thread-block clusters");
  const int64_t most = int64_t(kMaxCluster) * kMaxUnits;
  if (layer.H > most || layer.P > most) return refuse("hidden or output size beyond one cluster");
  const int H = int(layer.H), P = int(layer.P);
  const int preferred = ceil_div(H, 32) < kMaxCluster ? ceil_div(H, 32) : kMaxCluster;
  std::vector<int> sizes;
  for (int S = preferred; S <= kMaxCluster; ++S) sizes.push_back(S);
  for (int S = preferred - 1; S >= 1; --S) sizes.push_back(S);
  for (int S : sizes) {
    for (int NB = most_rows(layer); NB >= 8; NB -= 8) {
      const Partition part = make_partition(H, P, layer.proj, S, NB, layer.elem_bytes);
      if (part.U > kMaxUnits || !no_idle_cta(part)) break;
      const size_t bytes = smem_bytes(part, dir, false);
      if (bytes > dev.smem_per_block) continue;  // fewer rows per cluster may fit
      out.push_back(ClusterShape{part, int((layer.B + NB - 1) / NB), bytes});
      break;
    }
  }
  if (out.empty()) return refuse("W_hh does not fit the shared memory of a cluster");
  return out;
}

// The grid-tier shapes, best first: for each group size NB (largest first),
// the fewest CTAs per group whose slices fit, ordered by the launches in a
// row they need (groups that cannot be co-resident wait), then by CTAs.
inline std::vector<ClusterShape> grid_candidates(const DeviceFacts& dev, const LayerRequest& layer, Direction dir,
                                                 std::string* why) {
  std::vector<ClusterShape> out;
  auto refuse = [why](const std::string& reason) { return none(why, reason); };
  if (const std::string r = refusal(dev, layer); !r.empty()) return refuse(r);
  if (dev.sm_count <= 0) return refuse("no multiprocessors");
  const int64_t most = int64_t(dev.sm_count) * kMaxUnits;
  if (layer.H > most || layer.P > most) return refuse("hidden or output size beyond one CTA per SM");
  const int H = int(layer.H), P = int(layer.P);
  std::vector<int> rounds;
  for (int NB = most_rows(layer); NB >= 8; NB -= 8) {
    for (int S = ceil_div(H, kMaxUnits); S <= dev.sm_count; ++S) {
      const Partition part = make_partition(H, P, layer.proj, S, NB, layer.elem_bytes);
      if (part.U > kMaxUnits || !no_idle_cta(part)) continue;  // rounding U may leave a CTA idle
      const size_t bytes = smem_bytes(part, dir, true);
      if (bytes > dev.smem_per_block) continue;  // more CTAs: smaller slices
      const int groups = int((layer.B + NB - 1) / NB), at_once = dev.sm_count / S;
      const int launches = (groups + at_once - 1) / at_once;
      size_t at = 0;
      while (at < out.size() && (rounds[at] < launches || (rounds[at] == launches && out[at].part.S <= S))) ++at;
      out.insert(out.begin() + long(at), ClusterShape{part, groups, bytes, true});
      rounds.insert(rounds.begin() + long(at), launches);
      break;
    }
  }
  if (out.empty()) return refuse("W_hh does not fit the shared memory of one CTA per SM");
  return out;
}

// FUSEDLSTM_PERSISTENT: "0" keeps every layer on the per-step path, "1" or
// unset lets the selection below decide, "require" makes a layer that the
// persistent kernels cannot take an error (tests use it to know which path
// ran), "grid" is "require" with the grid tier only (to test that tier at
// sizes a cluster would take).
enum class Mode { kOff, kAuto, kRequire, kGrid };

inline std::optional<Mode> parse_mode(const char* value) {
  const std::string v = value ? value : "";
  if (v.empty() || v == "1") return Mode::kAuto;
  if (v == "0") return Mode::kOff;
  if (v == "require") return Mode::kRequire;
  if (v == "grid") return Mode::kGrid;
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

// The tier of one layer call: a cluster shape, else (none fits, or the
// device refuses them all) a grid shape.
// `active_clusters(shape)` is how many batch groups of the shape the device
// holds at once (cudaOccupancyMaxActiveClusters for a cluster shape; for a
// grid shape the CTAs per SM times the SMs over S, which a cooperative launch
// needs co-resident; a fake in tests): the first candidate with room for one
// group is taken, so a launch is never attempted that the device would
// refuse or that could only wait for other work to finish (a grid barrier
// would then never be met).
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
  std::vector<ClusterShape> candidates;
  std::string why;  // the last refusal: the grid tier's when neither tier has a shape
  if (s.mode != Mode::kGrid) candidates = cluster_candidates(s.device, s.layer, s.direction, &why);
  for (const ClusterShape& shape : grid_candidates(s.device, s.layer, s.direction, &why)) candidates.push_back(shape);
  for (ClusterShape& shape : candidates) {
    const int fit = active_clusters(shape);
    if (fit > 0) {
      shape.concurrent = fit < shape.clusters ? fit : shape.clusters;
      d.shape = shape;
      return d;
    }
  }
  d.reason = candidates.empty() ? why : "no shape fits on the device now (the occupancy query gives no room)";
  return d;
}

}  // namespace fusedlstm::persistent
