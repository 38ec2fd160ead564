// The tier selection of the persistent kernels (csrc/cuda/persistent_tier.h)
// without a GPU: which layers take the cluster-resident kernels on an H200
// (sm_90, 132 SMs, 227 KB of shared memory per CTA), in which cluster shape,
// and the fallbacks (other GPUs, float64, sizes beyond a cluster, a refused
// occupancy query, packed input under graph capture, the switch). Prints
// the shapes chosen for the bench's layers. Plain C++, no torch.
#include <cstdio>
#include <string>

#include "persistent_checks.h"
#include "cuda/persistent_tier.h"

namespace {

using namespace fusedlstm::persistent;

using persistent_checks::expect;

const DeviceFacts kH200{9, 0, 132, 232448, true};

LayerRequest layer(int elem_bytes, int64_t H, int64_t B, int64_t P = 0) {
  return LayerRequest{elem_bytes, H, P > 0 ? P : H, B, P > 0};
}

std::string describe(const ClusterShape& c) {
  char s[160];
  std::snprintf(s, sizeof s, "S=%d NB=%d U=%d clusters=%d smem=%zu", c.part.S, c.part.NB, c.part.U, c.clusters,
                c.smem_bytes);
  return s;
}

// The invariants of every candidate.
void check_candidates(const LayerRequest& l, Direction dir, const std::string& id) {
  std::string why;
  for (const ClusterShape& c : cluster_candidates(kH200, l, dir, &why)) {
    const Partition& p = c.part;
    const bool ok = c.smem_bytes <= kH200.smem_per_block && p.U <= kMaxUnits && p.U % 4 == 0 && p.S >= 1 &&
                    p.S <= kMaxCluster && p.S * p.U >= l.H && (p.S - 1) * p.U < l.H && p.S * p.Up >= l.P &&
                    p.NB % 8 == 0 && p.NB <= 8 * kMaxNTiles && int64_t(c.clusters) * p.NB >= l.B &&
                    int64_t(c.clusters - 1) * p.NB < l.B && p.Kh >= l.P && p.Kf >= l.H;
    expect(ok, id + ": candidate " + describe(c));
  }
}

void check_bench_shapes() {
  struct Bench {
    const char* name;
    int64_t H, B;
  };
  const Bench shapes[] = {{"fastrnns", 512, 64}, {"char", 256, 32},     {"blog-1000", 1000, 64},
                          {"blog-800", 800, 64}, {"small-b1", 256, 1},  {"small-b8", 256, 8},
                          {"small-h128", 128, 8}, {"packed", 256, 64}};
  std::printf("%-11s %-9s %-9s %s\n", "shape", "dtype", "direction", "first candidate (or why none)");
  for (const Bench& b : shapes) {
    for (int elem : {4, 2}) {
      for (Direction dir : {Direction::kForward, Direction::kBackward}) {
        std::string why;
        const auto c = cluster_candidates(kH200, layer(elem, b.H, b.B), dir, &why);
        std::printf("%-11s %-9s %-9s %s\n", b.name, elem == 4 ? "float32" : "16-bit",
                    dir == Direction::kForward ? "forward" : "backward", c.empty() ? why.c_str() : describe(c[0]).c_str());
      }
    }
  }
  // What the capacity comment of persistent_tier.h says.
  auto first = [](int elem, int64_t H, int64_t B, Direction dir) {
    std::string why;
    const auto c = cluster_candidates(kH200, layer(elem, H, B), dir, &why);
    return c.empty() ? ClusterShape{} : c[0];
  };
  const ClusterShape h128 = first(2, 128, 8, Direction::kForward);
  expect(h128.part.S == 4 && h128.part.NB == 8 && h128.clusters == 1, "small-h128 bfloat16: 1 cluster of 4 CTAs");
  const ClusterShape b1 = first(4, 256, 1, Direction::kForward);
  expect(b1.part.S == 8 && b1.part.U == 32 && b1.clusters == 1, "small-b1 float32: 1 cluster of 8 CTAs");
  const ClusterShape chr = first(2, 256, 32, Direction::kBackward);
  expect(chr.part.S == 8 && chr.part.NB == 32 && chr.clusters == 1, "char bfloat16 backward: 32 rows in 1 cluster");
  const ClusterShape packed = first(2, 256, 64, Direction::kForward);
  expect(packed.clusters == 2, "packed (B = 64): 2 clusters");
  const ClusterShape fast16 = first(2, 512, 64, Direction::kForward);
  expect(fast16.part.S == 16, "fastrnns bfloat16: clusters of 16 CTAs");
  const ClusterShape fast16b = first(2, 512, 64, Direction::kBackward);
  expect(fast16b.part.S == 16 && fast16b.part.NB < 32, "fastrnns bfloat16 backward: fewer rows per cluster");
  std::string why;
  expect(cluster_candidates(kH200, layer(4, 512, 64), Direction::kForward, &why).empty(),
         "fastrnns float32 does not fit a cluster");
  expect(cluster_candidates(kH200, layer(2, 1000, 64), Direction::kForward, &why).empty(),
         "blog's H = 1000 does not fit a cluster");
  expect(!cluster_candidates(kH200, layer(4, 384, 8), Direction::kBackward, &why).empty(),
         "float32 H = 384 fits clusters of 16");
}

void check_refusals() {
  std::string why;
  expect(cluster_candidates(DeviceFacts{8, 0, 108, 166912, true}, layer(2, 128, 8), Direction::kForward, &why).empty() &&
             why == "not an sm_90 device",
         "sm_80 refused: " + why);
  expect(cluster_candidates(DeviceFacts{10, 0, 148, 232448, true}, layer(2, 128, 8), Direction::kForward, &why).empty(),
         "sm_100 refused (compiled for sm_90 only)");
  expect(cluster_candidates(DeviceFacts{9, 0, 132, 232448, false}, layer(2, 128, 8), Direction::kForward, &why).empty(),
         "no cluster launch: refused");
  expect(cluster_candidates(kH200, layer(8, 128, 8), Direction::kForward, &why).empty() &&
             why == "dtype not float32, bfloat16 or float16",
         "float64 refused");
  expect(cluster_candidates(kH200, layer(2, 128, 0), Direction::kForward, &why).empty(), "empty batch refused");
  expect(cluster_candidates(kH200, layer(4, 1, 1), Direction::kForward, &why).size() >= 1, "H = 1 taken");
  expect(cluster_candidates(kH200, layer(2, 13, 3, 5), Direction::kBackward, &why).size() >= 1, "H = 13, P = 5 taken");
}

void check_decide() {
  Situation s;
  s.device = kH200;
  s.layer = layer(2, 256, 8);
  auto all = [](const ClusterShape&) { return 4; };
  const Decision d = decide(s, all);
  expect(d.shape.has_value() && d.shape->part.S == 8, "auto: clusters of 8");
  // Clusters of 8 refused (say, MPS or a busy device): the next candidate.
  auto portable_refused = [](const ClusterShape& c) { return c.part.S >= 8 ? 0 : 1; };
  const Decision d2 = decide(s, portable_refused);
  expect(d2.shape.has_value() && d2.shape->part.S < 8, "clusters of 8 refused: a smaller cluster");
  auto none = [](const ClusterShape&) { return 0; };
  const Decision d3 = decide(s, none);
  expect(!d3.shape && d3.reason.find("cudaOccupancyMaxActiveClusters") != std::string::npos,
         "every shape refused: the per-step path (" + d3.reason + ")");
  s.mode = Mode::kOff;
  expect(!decide(s, all).shape, "FUSEDLSTM_PERSISTENT=0: the per-step path");
  s.mode = Mode::kAuto;
  s.packed = true;
  expect(decide(s, all).shape.has_value(), "packed input: taken");
  s.capturing = true;
  expect(!decide(s, all).shape, "packed input under graph capture: the per-step path");
  s.packed = false;
  expect(decide(s, all).shape.has_value(), "dense input under graph capture: taken");
  expect(parse_mode(nullptr) == Mode::kAuto && parse_mode("") == Mode::kAuto && parse_mode("1") == Mode::kAuto &&
             parse_mode("0") == Mode::kOff && parse_mode("require") == Mode::kRequire && !parse_mode("yes"),
         "FUSEDLSTM_PERSISTENT values");
}

}  // namespace

int main() {
  check_refusals();
  check_decide();
  for (int elem : {4, 2})
    for (Direction dir : {Direction::kForward, Direction::kBackward})
      for (int64_t H : {1, 5, 13, 31, 32, 33, 64, 100, 128, 200, 256, 300, 384, 500, 512, 513, 1024})
        for (int64_t B : {1, 3, 8, 9, 33, 64})
          for (int64_t P : {int64_t(0), H > 3 ? H / 3 : int64_t(1)}) {
            check_candidates(layer(elem, H, B, P), dir,
                             "H=" + std::to_string(H) + " B=" + std::to_string(B) + " P=" + std::to_string(P));
          }
  check_bench_shapes();
  return persistent_checks::report();
}
