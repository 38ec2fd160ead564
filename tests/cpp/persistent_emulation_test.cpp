// The persistent kernels' step code (csrc/cuda/persistent_fwd.h,
// persistent_bwd.h) run by the host context (one CPU thread per CTA, warps
// as 32-lane arrays, mma.sync from the PTX fragment tables, distributed
// shared memory as peer buffers, the shared-memory race check), against a
// plain float64 LSTM over the option matrix: float32, bfloat16 and float16;
// dense and packed input; with and without a projection; forward and
// reverse; odd sizes (H = 13, B = 3) beside round ones; cluster sizes 1 to
// 4, CTAs holding only padding, several clusters per launch. Also the
// number formats' conversions and the fragment layout. No torch, no GPU:
// ctest builds it once plainly and once under ThreadSanitizer.
//
//   persistent_emulation_test [--quick] [--yields] [--seed N] [--drop BARRIER [--grid]]
//     --quick    a few cases
//     --yields   random sleeps and yields in every CTA thread
//     --drop B   skip every barrier named B (persistent_context.h's names)
//                in one case (the grid tier's with --grid): the checks must
//                then report a race; prints what they found
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "persistent_checks.h"
#include "cuda/persistent_emulation.h"
#include "fusedlstm/layer_plan.h"

namespace {

using namespace fusedlstm;
using namespace fusedlstm::persistent;

using persistent_checks::expect;

using Vec = std::vector<double>;

// --- the float64 oracle: the recurrence of one layer and direction -------------------------

struct Layer {
  int64_t T, B;
  int H, P;
  bool proj, reverse;
  std::vector<StepPlan> plan;
  int64_t rows;
  Vec x_proj, w_hh, w_hr, h0, c0;  // [rows,4H] [4H,P] [P,H] [B,P] [B,H]
};

struct Forward {
  Vec output, h_n, c_n, acts, cells, h_raw;
};

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

Forward reference_forward(const Layer& L) {
  const int H = L.H, P = L.P;
  Forward f;
  f.output.assign(L.rows * P, 0);
  f.acts.assign(L.rows * 4 * H, 0);
  f.cells.assign(L.rows * H, 0);
  f.h_raw.assign(L.rows * H, 0);
  Vec h_state = L.h0, c_state = L.c0;
  for (const StepPlan& s : L.plan) {
    for (int64_t b = 0; b < s.rows; ++b) {
      if (b >= s.continuing) {  // starts here
        for (int j = 0; j < P; ++j) h_state[b * P + j] = L.h0[b * P + j];
        for (int u = 0; u < H; ++u) c_state[b * H + u] = L.c0[b * H + u];
      }
      const int64_t row = s.offset + b;
      Vec h(H);
      for (int u = 0; u < H; ++u) {
        double z[4];
        for (int g = 0; g < 4; ++g) {
          double acc = L.x_proj[row * 4 * H + g * H + u];
          for (int j = 0; j < P; ++j) acc += L.w_hh[(g * H + u) * int64_t(P) + j] * h_state[b * P + j];
          z[g] = acc;
        }
        const double i = sigmoid(z[0]), fg = sigmoid(z[1]), g = std::tanh(z[2]), o = sigmoid(z[3]);
        const double c = fg * c_state[b * H + u] + i * g;
        c_state[b * H + u] = c;
        h[u] = o * std::tanh(c);
        f.acts[row * 4 * H + u] = i;
        f.acts[row * 4 * H + H + u] = fg;
        f.acts[row * 4 * H + 2 * H + u] = g;
        f.acts[row * 4 * H + 3 * H + u] = o;
        f.cells[row * H + u] = c;
        f.h_raw[row * H + u] = h[u];
      }
      for (int j = 0; j < P; ++j) {
        double out = h[j < H ? j : 0];
        if (L.proj) {
          out = 0;
          for (int u = 0; u < H; ++u) out += L.w_hr[int64_t(j) * H + u] * h[u];
        }
        f.output[row * P + j] = out;
        h_state[b * P + j] = out;
      }
    }
  }
  f.h_n = h_state;
  f.c_n = c_state;
  return f;
}

struct Backward {
  Vec grad_x, grad_h0, grad_c0, h_prev, dh_out;
};

// Gradients from the forward's saved results (`out`, `acts`, `cells`).
Backward reference_backward(const Layer& L, const Vec& out, const Vec& acts, const Vec& cells, const Vec* go,
                            const Vec* ghn, const Vec* gcn) {
  const int H = L.H, P = L.P;
  Backward r;
  r.grad_x.assign(L.rows * 4 * H, 0);
  r.grad_h0.assign(L.B * P, 0);
  r.grad_c0.assign(L.B * H, 0);
  r.h_prev.assign(L.rows * P, 0);
  r.dh_out.assign(L.rows * P, 0);
  Vec dh_state = ghn ? *ghn : Vec(L.B * P, 0.0), dc_state = gcn ? *gcn : Vec(L.B * H, 0.0);
  for (int64_t k = L.T - 1; k >= 0; --k) {
    const StepPlan& s = L.plan[k];
    for (int64_t b = 0; b < s.rows; ++b) {
      const int64_t row = s.offset + b;
      const bool continues = b < s.continuing;
      Vec dout(P), dh(H, 0.0);
      for (int j = 0; j < P; ++j) {
        dout[j] = dh_state[b * P + j] + (go ? (*go)[row * P + j] : 0.0);
        r.dh_out[row * P + j] = dout[j];
        r.h_prev[row * P + j] = continues ? out[(s.prev_offset + b) * P + j] : L.h0[b * P + j];
      }
      for (int u = 0; u < H; ++u) {
        if (!L.proj) {
          dh[u] = dout[u];
          continue;
        }
        for (int j = 0; j < P; ++j) dh[u] += dout[j] * L.w_hr[int64_t(j) * H + u];
      }
      Vec d(4 * H);
      for (int u = 0; u < H; ++u) {
        const double* a = &acts[row * 4 * H + u];
        const Gates<double> act{a[0], a[H], a[2 * H], a[3 * H]};
        const double cp = continues ? cells[(s.prev_offset + b) * H + u] : L.c0[b * H + u];
        double dcp;
        const Gates<double> g = gates_backward(act, cp, cells[row * H + u], dh[u], dc_state[b * H + u], dcp);
        d[u] = g.i;
        d[H + u] = g.f;
        d[2 * H + u] = g.g;
        d[3 * H + u] = g.o;
        dc_state[b * H + u] = dcp;
        if (!continues) r.grad_c0[b * H + u] = dcp;
      }
      for (int j = 0; j < 4 * H; ++j) r.grad_x[row * 4 * H + j] = d[j];
      for (int j = 0; j < P; ++j) {
        double acc = 0;
        for (int g = 0; g < 4 * H; ++g) acc += d[g] * L.w_hh[g * int64_t(P) + j];
        dh_state[b * P + j] = acc;
        if (!continues) r.grad_h0[b * P + j] = acc;
      }
    }
  }
  return r;
}

// --- running the step code -------------------------------------------------------------------

// The grid tier's global buffers (persistent_layout.h), counters zero, the
// rest 0xff bytes (NaN in every format), as uninitialised device memory
// might be: a read of anything that no CTA wrote shows in the results.
template <typename E>
struct GridStorage {
  std::vector<Counter> counters;
  std::vector<E> h, hfull, dh_out;
  std::vector<float> shares;
  GridBuffers<E> buffers;

  GridStorage(const Partition& part, int groups, bool grid) {
    if (!grid) return;
    const GridSizes n = grid_sizes(part, groups);
    counters.assign(groups, 0);
    h.resize(2 * n.h);
    hfull.resize(n.hfull);
    dh_out.resize(n.dh_out);
    shares.resize(2 * n.shares);
    auto poison = [](auto& v) { std::memset(static_cast<void*>(v.data()), 0xff, v.size() * sizeof(v[0])); };
    poison(h);
    poison(hfull);
    poison(dh_out);
    poison(shares);
    buffers = GridBuffers<E>{counters.data(), h.data(), h.data() + n.h, hfull.data(), shares.data(),
                             shares.data() + n.shares, dh_out.data()};
  }
};

template <typename Num>
std::vector<typename Num::storage> to_low(const Vec& v) {
  std::vector<typename Num::storage> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = Num::from_float(float(v[i]));
  return out;
}

template <typename Num>
Vec from_low(const std::vector<typename Num::storage>& v) {
  Vec out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = Num::to_float(v[i]);
  return out;
}

template <typename Num>
Vec rounded(const Vec& v) {
  return from_low<Num>(to_low<Num>(v));
}

struct Case {
  int H, P;  // P = 0: no projection
  int64_t B, T;
  bool packed, reverse, save;
  int S, NB;
  bool grid = false;  // the grid tier (exchange through global memory), else the cluster tier
};

std::string describe(const char* dtype, const Case& c) {
  char s[200];
  std::snprintf(s, sizeof s, "%s H=%d P=%d B=%ld T=%ld %s%s%s S=%d NB=%d %s", dtype, c.H, c.P, long(c.B),
                long(c.T), c.packed ? "packed" : "dense", c.reverse ? " reverse" : "", c.save ? "" : " no-save", c.S,
                c.NB, c.grid ? "grid" : "cluster");
  return s;
}

// max |a - e| / (1 + |e|); infinite where a value is NaN
double error(const Vec& a, const Vec& e) {
  double worst = 0;
  for (size_t i = 0; i < e.size(); ++i) {
    const double err = std::fabs(a[i] - e[i]) / (1.0 + std::fabs(e[i]));
    if (std::isnan(err)) return INFINITY;
    if (err > worst) worst = err;
  }
  return worst;
}

void expect_close(const std::string& what, const Vec& a, const Vec& e, double tol) {
  const bool same_size = a.size() == e.size();
  const double err = same_size ? error(a, e) : INFINITY;
  expect(same_size && err <= tol, what + " (error " + std::to_string(err) + ", tolerance " + std::to_string(tol) + ")");
}

template <typename Num>
void check_case(const Case& c, const HostOptions& options, std::mt19937_64& rng, double tol) {
  using E = typename Num::storage;
  const std::string id = describe(Num::kName, c);
  Layer L;
  L.T = c.T;
  L.B = c.B;
  L.H = c.H;
  L.proj = c.P > 0;
  L.P = L.proj ? c.P : c.H;
  L.reverse = c.reverse;
  std::vector<int64_t> batch_sizes;
  if (c.packed) {  // lengths T, T-1, ..., at least 1, longest first
    for (int64_t t = 0; t < c.T; ++t) {
      int64_t n = 0;
      for (int64_t b = 0; b < c.B; ++b) n += std::max<int64_t>(1, c.T - b) > t;
      batch_sizes.push_back(n);
    }
  }
  L.plan = build_layer_plan(c.packed ? batch_sizes.data() : nullptr, c.T, c.B, c.reverse);
  L.rows = plan_rows(L.plan);
  std::normal_distribution<double> normal;
  auto draw = [&](size_t n, double scale) {
    Vec v(n);
    for (double& x : v) x = normal(rng) * scale;
    return rounded<Num>(v);
  };
  const int H = L.H, P = L.P;
  L.x_proj = draw(L.rows * 4 * H, 1.0);
  L.w_hh = draw(size_t(4) * H * P, 1.0 / std::sqrt(double(P)));
  L.w_hr = L.proj ? draw(size_t(P) * H, 1.0 / std::sqrt(double(H))) : Vec();
  L.h0 = draw(L.B * P, 1.0);
  L.c0 = draw(L.B * H, 1.0);
  const Forward expected = reference_forward(L);

  // Forward.
  const int elem = int(sizeof(E));
  const Partition part = make_partition(H, P, L.proj, c.S, c.NB, elem);
  const auto x_proj = to_low<Num>(L.x_proj), w_hh = to_low<Num>(L.w_hh), w_hr = to_low<Num>(L.w_hr);
  const auto h0 = to_low<Num>(L.h0), c0 = to_low<Num>(L.c0);
  std::vector<E> output(L.rows * P), h_n(L.B * P), c_n(L.B * H);
  std::vector<E> acts(c.save ? L.rows * 4 * H : 0), cells(c.save ? L.rows * H : 0);
  std::vector<E> h_raw(c.save && L.proj ? L.rows * H : 0);
  FwdParams<Num> f;
  f.part = part;
  f.plan = PlanView{c.packed ? L.plan.data() : nullptr, L.T, L.B, L.reverse};
  f.save = c.save;
  f.x_proj = x_proj.data();
  f.w_hh = w_hh.data();
  f.w_hr = L.proj ? w_hr.data() : nullptr;
  f.h0 = h0.data();
  f.c0 = c0.data();
  f.output = output.data();
  f.h_n = h_n.data();
  f.c_n = c_n.data();
  f.acts = c.save ? acts.data() : nullptr;
  f.cells = c.save ? cells.data() : nullptr;
  f.h_raw = c.save && L.proj ? h_raw.data() : nullptr;
  GridStorage<E> fg(part, clusters_for(L.B, c.NB), c.grid);
  f.grid = fg.buffers;
  emulate_forward(f, c.grid, options);
  expect_close(id + " output", from_low<Num>(output), expected.output, tol);
  expect_close(id + " h_n", from_low<Num>(h_n), expected.h_n, tol);
  expect_close(id + " c_n", from_low<Num>(c_n), expected.c_n, tol);
  if (!c.save) return;
  expect_close(id + " acts", from_low<Num>(acts), expected.acts, tol);
  expect_close(id + " cells", from_low<Num>(cells), expected.cells, tol);
  if (L.proj) expect_close(id + " h_raw", from_low<Num>(h_raw), expected.h_raw, tol);

  // Backward, from the oracle's forward results rounded to the format, with
  // and without gradients for h_n and c_n.
  const Vec out_r = rounded<Num>(expected.output), acts_r = rounded<Num>(expected.acts);
  const Vec cells_r = rounded<Num>(expected.cells);
  for (bool state_grads : {true, false}) {
    const std::string bid = id + (state_grads ? " all-grads" : " grad_output-only");
    const Vec go = draw(L.rows * P, 1.0), ghn = draw(L.B * P, 1.0), gcn = draw(L.B * H, 1.0);
    const Backward bexp = reference_backward(L, out_r, acts_r, cells_r, &go, state_grads ? &ghn : nullptr,
                                             state_grads ? &gcn : nullptr);
    const auto go_l = to_low<Num>(go), ghn_l = to_low<Num>(ghn), gcn_l = to_low<Num>(gcn);
    const auto out_l = to_low<Num>(out_r), acts_l = to_low<Num>(acts_r), cells_l = to_low<Num>(cells_r);
    std::vector<E> grad_x(L.rows * 4 * H), grad_h0(L.B * P), grad_c0(L.B * H), h_prev(L.rows * P);
    std::vector<E> dh_out(L.proj ? L.rows * P : 0);
    BwdParams<Num> bp;
    bp.part = part;
    bp.plan = f.plan;
    bp.grad_output = go_l.data();
    bp.grad_h_n = state_grads ? ghn_l.data() : nullptr;
    bp.grad_c_n = state_grads ? gcn_l.data() : nullptr;
    bp.w_hh = w_hh.data();
    bp.w_hr = f.w_hr;
    bp.h0 = h0.data();
    bp.c0 = c0.data();
    bp.output = out_l.data();
    bp.acts = acts_l.data();
    bp.cells = cells_l.data();
    bp.grad_x = grad_x.data();
    bp.grad_h0 = grad_h0.data();
    bp.grad_c0 = grad_c0.data();
    bp.h_prev = h_prev.data();
    bp.dh_out = L.proj ? dh_out.data() : nullptr;
    GridStorage<E> bg(part, clusters_for(L.B, c.NB), c.grid);
    bp.grid = bg.buffers;
    emulate_backward(bp, c.grid, options);
    expect_close(bid + " grad_x_proj", from_low<Num>(grad_x), bexp.grad_x, 2 * tol);
    expect_close(bid + " grad_h0", from_low<Num>(grad_h0), bexp.grad_h0, 2 * tol);
    expect_close(bid + " grad_c0", from_low<Num>(grad_c0), bexp.grad_c0, 2 * tol);
    expect_close(bid + " h_prev", from_low<Num>(h_prev), bexp.h_prev, 0.0);
    if (L.proj) expect_close(bid + " dh_out", from_low<Num>(dh_out), bexp.dh_out, 2 * tol);
  }
}

// Every case of the matrix in one number format. Tolerances against float64
// (relative to 1 + |value|, T <= 7): float32 1e-5; the 16-bit formats a few
// units of their rounding (bfloat16 2^-8, float16 2^-11), since h is rounded
// every step.
template <typename Num>
void check_format(const std::vector<Case>& cases, const HostOptions& options, std::mt19937_64& rng, double tol) {
  for (const Case& c : cases) {
    try {
      check_case<Num>(c, options, rng, tol);
    } catch (const std::exception& e) {
      expect(false, describe(Num::kName, c) + ": " + e.what());
    }
  }
}

std::vector<Case> full_matrix() {
  std::vector<Case> cases;
  for (bool packed : {false, true})
    for (int P : {0, 5})
      for (bool reverse : {false, true}) {
        cases.push_back({13, P, 3, 6, packed, reverse, true, 2, 8});   // odd sizes, 2 CTAs
        cases.push_back({40, P, 11, 5, packed, reverse, true, 3, 8});  // 2 clusters of 3 CTAs
      }
  cases.push_back({13, 0, 3, 4, false, false, false, 1, 8});   // inference: nothing saved
  cases.push_back({13, 7, 3, 4, true, true, false, 2, 8});
  cases.push_back({13, 0, 3, 5, true, false, true, 4, 8});     // CTAs 2, 3: padding only
  cases.push_back({64, 0, 20, 3, false, true, true, 1, 32});   // 2 gate tiles per warp, 3 n-tiles
  cases.push_back({32, 24, 17, 4, true, false, true, 4, 16});  // 2 clusters of 16 rows
  cases.push_back({1, 0, 1, 3, false, false, true, 1, 8});     // the smallest layer
  // The grid tier: the same options, more CTAs per group than a cluster
  // would take, several groups.
  for (bool packed : {false, true})
    for (int P : {0, 5})
      for (bool reverse : {false, true}) {
        cases.push_back({13, P, 3, 6, packed, reverse, true, 2, 8, true});
        cases.push_back({40, P, 11, 5, packed, reverse, true, 5, 8, true});
      }
  cases.push_back({13, 7, 3, 4, true, true, false, 2, 8, true});
  cases.push_back({72, 0, 20, 3, false, true, true, 9, 16, true});
  return cases;
}

std::vector<Case> quick_matrix() {
  return {{13, 0, 3, 4, true, false, true, 2, 8}, {13, 5, 3, 4, true, true, true, 3, 8},
          {40, 0, 11, 3, false, false, true, 3, 8}, {13, 5, 3, 4, true, true, true, 3, 8, true}};
}

// 16-bit values (NaNs aside) that do not come back from float.
template <typename Num>
int round_trips() {
  int bad = 0;
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float x = Num::to_float(uint16_t(h));
    if (!std::isnan(x) && Num::from_float(x) != h) ++bad;
  }
  return bad;
}

// The number formats' conversions against exact rules, and the inverse
// fragment mapping against the PTX rules.
void check_formats_and_fragments() {
  expect(round_trips<F16>() == 0, "float16: every value round-trips");
  expect(F16::from_float(1.0f + 1.0f / 2048) == 0x3c00, "float16 tie to even, down");
  expect(F16::from_float(1.0f + 3.0f / 2048) == 0x3c02, "float16 tie to even, up");
  expect(F16::from_float(65520.0f) == 0x7c00 && F16::from_float(65519.0f) == 0x7bff, "float16 overflow");
  expect(F16::from_float(std::ldexp(1.0f, -25)) == 0 && F16::from_float(std::ldexp(1.5f, -25)) == 1,
         "float16 smallest subnormal");
  expect(round_trips<BF16>() == 0, "bfloat16: every value round-trips");
  expect(BF16::from_float(1.0f + 1.0f / 256) == 0x3f80 && BF16::from_float(1.0f + 3.0f / 256) == 0x3f82,
         "bfloat16 ties to even");
  expect(std::isnan(BF16::to_float(BF16::from_float(NAN))) && std::isnan(F16::to_float(F16::from_float(NAN))),
         "NaN stays NaN");
  // a_frag_slot is a bijection of the 16 x 16 tile onto (lane, register, half)
  // that agrees with the PTX rule for a0..a7.
  bool ok = true;
  std::vector<int> seen(16 * 16, 0);
  for (int row = 0; row < 16; ++row)
    for (int col = 0; col < 16; ++col) {
      const AFragSlot s = a_frag_slot(row, col);
      const int i = 2 * s.reg + s.half, g = s.lane >> 2, q = s.lane % 4;
      const int ptx_row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
      const int ptx_col = q * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      ok = ok && ptx_row == row && ptx_col == col;
      ++seen[(s.lane * 4 + s.reg) * 2 + s.half];
    }
  for (int n : seen) ok = ok && n == 1;
  expect(ok, "A fragment packing matches the PTX layout of mma.m16n8k16");
}

}  // namespace

int main(int argc, char** argv) {
  HostOptions options;
  bool quick = false, grid = false;
  std::string drop;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      quick = true;
    } else if (arg == "--yields") {
      options.random_yields = true;
    } else if (arg == "--seed" && i + 1 < argc) {
      options.seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (arg == "--drop" && i + 1 < argc) {
      drop = argv[++i];
    } else if (arg == "--grid") {
      grid = true;
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--yields] [--seed N] [--drop BARRIER [--grid]]\n", argv[0]);
      return 2;
    }
  }
  if (!drop.empty()) {
    for (int b = 0; b < int(Barrier::kCount); ++b) {
      if (drop == barrier_name(Barrier(b))) options.drop_barrier = b;
    }
    if (options.drop_barrier < 0) {
      std::fprintf(stderr, "unknown barrier %s\n", drop.c_str());
      return 2;
    }
    // One case that passes every barrier kind; the checks must object.
    std::mt19937_64 rng(options.seed);
    const Case c{13, 5, 3, 4, true, false, true, 3, 8, grid};
    try {
      check_case<BF16>(c, options, rng, 3e-2);
      std::printf("barrier %s dropped: %d of %d checks failed\n", drop.c_str(), persistent_checks::failures,
                  persistent_checks::checks);
    } catch (const std::exception& e) {
      std::printf("barrier %s dropped: %s\n", drop.c_str(), e.what());
    }
    return 0;
  }

  check_formats_and_fragments();
  std::mt19937_64 rng(options.seed);
  const std::vector<Case> cases = quick ? quick_matrix() : full_matrix();
  check_format<F32>(cases, options, rng, 1e-5);
  check_format<BF16>(cases, options, rng, 3e-2);
  check_format<F16>(cases, options, rng, 4e-3);
  return persistent_checks::report();
}
