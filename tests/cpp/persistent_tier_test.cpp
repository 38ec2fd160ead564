// The tier selection of the persistent kernels (csrc/cuda/persistent_tier.h)
// without a GPU: which layers take the persistent kernels on an H200
// (sm_90, 132 SMs, 227 KB of shared memory per CTA), in which tier
// (cluster, grid) and shape, and the fallbacks (other GPUs, float64, sizes
// beyond the grid, a refused occupancy query, packed input under graph
// capture, the switch). Prints the shapes chosen for the bench's layers.
// Plain C++, no torch.
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
  std::snprintf(s, sizeof s, "%s S=%d NB=%d U=%d groups=%d smem=%zu", c.grid ? "grid" : "cluster", c.part.S,
                c.part.NB, c.part.U, c.clusters, c.smem_bytes);
  return s;
}

// The first shape of the tier that decide() would try.
ClusterShape first(int elem, int64_t H, int64_t B, Direction dir) {
  std::string why;
  auto c = cluster_candidates(kH200, layer(elem, H, B), dir, &why);
  if (c.empty()) c = grid_candidates(kH200, layer(elem, H, B), dir, &why);
  return c.empty() ? ClusterShape{} : c[0];
}

// The invariants of every candidate of both tiers.
void check_candidates(const LayerRequest& l, Direction dir, const std::string& id) {
  std::string why;
  for (bool grid : {false, true}) {
    const auto shapes = grid ? grid_candidates(kH200, l, dir, &why) : cluster_candidates(kH200, l, dir, &why);
    for (const ClusterShape& c : shapes) {
      const Partition& p = c.part;
      const bool ok = c.grid == grid && c.smem_bytes <= kH200.smem_per_block && p.U <= kMaxUnits && p.U % 4 == 0 &&
                      p.S >= 1 && p.S <= (grid ? kH200.sm_count : kMaxCluster) && p.S * p.U >= l.H &&
                      (p.S - 1) * p.U < l.H && p.S * p.Up >= l.P && p.NB % 8 == 0 && p.NB <= 8 * kMaxNTiles &&
                      int64_t(c.clusters) * p.NB >= l.B && int64_t(c.clusters - 1) * p.NB < l.B && p.Kh >= l.P &&
                      p.Kf >= l.H && c.smem_bytes == smem_bytes(p, dir, grid);
      expect(ok, id + ": candidate " + describe(c));
    }
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
  std::printf("%-11s %-9s %-9s %s\n", "shape", "dtype", "direction", "first candidate");
  for (const Bench& b : shapes) {
    for (int elem : {4, 2}) {
      for (Direction dir : {Direction::kForward, Direction::kBackward}) {
        const ClusterShape c = first(elem, b.H, b.B, dir);
        expect(c.clusters > 0, std::string(b.name) + ": a persistent kernel takes it");
        std::printf("%-11s %-9s %-9s %s\n", b.name, elem == 4 ? "float32" : "16-bit",
                    dir == Direction::kForward ? "forward" : "backward", describe(c).c_str());
      }
    }
  }
  // What the capacity comments of persistent_tier.h say.
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
  const ClusterShape blog16 = first(2, 1000, 64, Direction::kForward);
  expect(blog16.grid && blog16.part.NB == 32 && blog16.clusters == 2 && 2 * blog16.part.S <= kH200.sm_count,
         "blog bfloat16 forward: 2 groups of 32 rows, co-resident");
  const ClusterShape blog32 = first(4, 1000, 64, Direction::kForward);
  expect(blog32.grid && blog32.part.U == 8, "blog float32 forward: the grid tier, 8 units per CTA");
  expect(first(4, 512, 64, Direction::kBackward).grid, "fastrnns float32 backward: the grid tier");
  expect(grid_candidates(kH200, layer(4, 9000, 8), Direction::kForward, &why).empty(),
         "H = 9000 does not fit one CTA per SM");
}

void check_refusals() {
  std::string why;
  expect(cluster_candidates(DeviceFacts{8, 0, 108, 166912, true}, layer(2, 128, 8), Direction::kForward, &why).empty() &&
             why == "not an sm_90 device",
         "sm_80 refused: " + why);
  expect(cluster_candidates(DeviceFacts{10, 0, 148, 232448, true}, layer(2, 128, 8), Direction::kForward, &why).empty(),
         "sm_100 refused (compiled for sm_90 only)");
  expect(cluster_candidates(DeviceFacts{9, 0, 132, 232448, false}, layer(2, 128, 8), Direction::kForward, &why).empty(),
         "no cluster launch: no cluster shape");
  expect(!grid_candidates(DeviceFacts{9, 0, 132, 232448, false}, layer(2, 128, 8), Direction::kForward, &why).empty(),
         "no cluster launch: the grid tier");
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
  auto portable_refused = [](const ClusterShape& c) { return c.part.S >= 8 && !c.grid ? 0 : 1; };
  const Decision d2 = decide(s, portable_refused);
  expect(d2.shape.has_value() && d2.shape->part.S < 8 && !d2.shape->grid, "clusters of 8 refused: a smaller cluster");
  auto clusters_refused = [](const ClusterShape& c) { return c.grid ? 2 : 0; };
  const Decision d4 = decide(s, clusters_refused);
  expect(d4.shape.has_value() && d4.shape->grid, "every cluster refused: the grid tier");
  auto none = [](const ClusterShape&) { return 0; };
  const Decision d3 = decide(s, none);
  expect(!d3.shape && d3.reason.find("occupancy") != std::string::npos,
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
  s.capturing = false;
  s.mode = Mode::kGrid;
  const Decision g = decide(s, all);
  expect(g.shape && g.shape->grid && g.shape->concurrent == g.shape->clusters, "FUSEDLSTM_PERSISTENT=grid");
  s.mode = Mode::kAuto;
  s.layer = layer(4, 1000, 64);
  auto one_group = [](const ClusterShape&) { return 1; };
  const Decision big = decide(s, one_group);
  expect(big.shape && big.shape->grid && big.shape->concurrent == 1, "grid groups one launch at a time");
  expect(parse_mode(nullptr) == Mode::kAuto && parse_mode("") == Mode::kAuto && parse_mode("1") == Mode::kAuto &&
             parse_mode("0") == Mode::kOff && parse_mode("require") == Mode::kRequire &&
             parse_mode("grid") == Mode::kGrid && !parse_mode("yes"),
         "FUSEDLSTM_PERSISTENT values");
}

}  // namespace

int main() {
  check_refusals();
  check_decide();
  for (int elem : {4, 2})
    for (Direction dir : {Direction::kForward, Direction::kBackward})
      for (int64_t H : {1, 5, 13, 31, 32, 33, 64, 100, 128, 200, 256, 300, 384, 500, 512, 513, 800, 1000, 2048})
        for (int64_t B : {1, 3, 8, 9, 33, 64})
          for (int64_t P : {int64_t(0), H > 3 ? H / 3 : int64_t(1)}) {
            check_candidates(layer(elem, H, B, P), dir,
                             "H=" + std::to_string(H) + " B=" + std::to_string(B) + " P=" + std::to_string(P));
          }
  check_bench_shapes();
  return persistent_checks::report();
}
