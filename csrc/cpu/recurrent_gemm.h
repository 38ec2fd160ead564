// The per-step products of an LSTM recurrence on the CPU, and the thread team
// that runs every step of a layer.
//
// Each step multiplies a few rows (the batch) by a weight matrix that stays
// the same for all T steps: C[n, N] = A[n, K] @ B[K, N]. B is packed once per
// layer call into column panels, [panels][K][cols] with cols = 4 vectors, so
// the micro-kernel streams it with aligned vector loads; A rows are
// broadcast element by element. A tile's results never go to memory: they are
// handed, in registers, to an epilogue (the fused gate math of the layer).
//
// Why not one BLAS call per step: on the 2-core AVX-512 development machine
// (AMD EPYC), torch.mm reached 129 GFLOP/s at the char-model step size
// [32, 256] x [256, 1024] against ~230 at large sizes, and ~20 us per call at
// B = 1, where a step's whole budget to match oneDNN's LSTM is ~9 us.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <type_traits>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fusedlstm::cpu {
inline namespace CPU_CAPABILITY {  // one copy per SIMD level (lstm_cpu.h)

template <typename scalar_t>
using math_type = at::opmath_type<scalar_t>;  // float for half and bfloat16

// A packed panel is this many vectors wide.
constexpr int64_t kPanelVecs = 4;

// Rows per micro-kernel tile: rows * kPanelVecs accumulators, kPanelVecs
// panel vectors and one broadcast must fit the vector registers (32 with
// AVX-512, 16 with AVX2 and narrower).
template <typename math_t>
constexpr int kTileRows = at::vec::Vectorized<math_t>::size() * sizeof(math_t) == 64 ? 6 : 2;

// B [K, N] packed into column panels of `cols` columns; past N, zeros.
template <typename math_t>
struct Panels {
  static constexpr int64_t cols = kPanelVecs * at::vec::Vectorized<math_t>::size();
  at::Tensor storage;  // [panels, K, cols]
  int64_t K = 0, panels = 0;
  const math_t* panel(int64_t p) const { return storage.const_data_ptr<math_t>() + p * K * cols; }
};

// Storage for B [K, N] as panels, uninitialised.
template <typename math_t>
Panels<math_t> empty_panels(int64_t K, int64_t N) {
  Panels<math_t> b;
  b.K = K;
  b.panels = (N + b.cols - 1) / b.cols;
  b.storage = at::empty({b.panels, K, b.cols}, at::TensorOptions().dtype(c10::CppTypeToScalarType<math_t>::value));
  return b;
}

// Packs B with B[k][n] = value(k, n) for n < N (zero beyond); `value` should
// read memory along n (a source laid out like B).
template <typename math_t, typename Value>
Panels<math_t> pack(int64_t K, int64_t N, const Value& value) {
  Panels<math_t> b = empty_panels<math_t>(K, N);
  math_t* out = b.storage.template mutable_data_ptr<math_t>();
  at::parallel_for(0, b.panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t c = 0; c < b.cols; ++c) {
          const int64_t n = p * b.cols + c;
          out[(p * K + k) * b.cols + c] = n < N ? static_cast<math_t>(value(k, n)) : math_t(0);
        }
  });
  return b;
}

// dst[k * ld + r] = src[r * K + k] for r < rows and 0 for rows <= r < width,
// k < K: `rows` rows of a row-major source become as many columns of a panel.
// A transposition in registers where the types match (at::vec's, 16 x 16
// blocks with AVX-512): element by element, reading 4 * U source rows at a
// power-of-two stride in lockstep, W_hh's pack took ~25 us per call at
// H = 128 (1 thread), a quarter of a one-token FusedLSTM forward (perf).
template <typename math_t, typename scalar_t>
void transpose_into_panel(const scalar_t* src, int64_t rows, int64_t K, math_t* dst, int64_t ld,
                          int64_t width) {
  if constexpr (std::is_same_v<scalar_t, math_t>) {
    if (rows > 0) at::vec::transpose_mxn<math_t>(src, K, dst, ld, static_cast<int>(rows), static_cast<int>(K));
  } else {
    constexpr int64_t kLine = 64 / sizeof(scalar_t);  // one source cache line per row at a time
    for (int64_t k0 = 0; k0 < K; k0 += kLine)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = k0; k < std::min(K, k0 + kLine); ++k) dst[k * ld + r] = static_cast<math_t>(src[r * K + k]);
  }
  if (rows < width)
    for (int64_t k = 0; k < K; ++k) std::fill(dst + k * ld + rows, dst + k * ld + width, math_t(0));
}

// B = W^T for W [4H, K] (the LSTM's W_hh), panels gate-interleaved: panel p
// holds hidden units [p*U, p*U + U) of gates i, f, g, o side by side, U being
// one vector, so a tile's four accumulator vectors are the four gates of the
// same units and the gate math runs in the epilogue.
template <typename scalar_t>
Panels<math_type<scalar_t>> pack_gate_interleaved(const at::Tensor& w, int64_t H) {
  using math_t = math_type<scalar_t>;
  constexpr int64_t U = at::vec::Vectorized<math_t>::size();
  const scalar_t* wp = w.const_data_ptr<scalar_t>();
  const int64_t K = w.size(1);
  Panels<math_t> b = empty_panels<math_t>(K, 4 * ((H + U - 1) / U * U));
  math_t* out = b.storage.template mutable_data_ptr<math_t>();
  at::parallel_for(0, b.panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t u0 = p * U, units = std::min(U, H - u0);
      for (int64_t gate = 0; gate < 4; ++gate)
        transpose_into_panel(wp + (gate * H + u0) * K, units, K, out + p * K * b.cols + gate * U, b.cols, U);
    }
  });
  return b;
}

// B = M^T for M [N, K].
template <typename scalar_t>
Panels<math_type<scalar_t>> pack_transposed(const at::Tensor& m) {
  using math_t = math_type<scalar_t>;
  const scalar_t* mp = m.const_data_ptr<scalar_t>();
  const int64_t N = m.size(0), K = m.size(1);
  Panels<math_t> b = empty_panels<math_t>(K, N);
  math_t* out = b.storage.template mutable_data_ptr<math_t>();
  at::parallel_for(0, b.panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n0 = p * b.cols;
      transpose_into_panel(mp + n0 * K, std::min(b.cols, N - n0), K, out + p * K * b.cols, b.cols, b.cols);
    }
  });
  return b;
}

// B = M for M [K, N].
template <typename scalar_t>
Panels<math_type<scalar_t>> pack_plain(const at::Tensor& m) {
  const scalar_t* mp = m.const_data_ptr<scalar_t>();
  const int64_t K = m.size(0), N = m.size(1);
  return pack<math_type<scalar_t>>(K, N, [&](int64_t k, int64_t n) { return mp[k * N + n]; });
}

// The rows of A for one step: row r < split at prev + r * prev_ld, the others
// at alt + r * alt_ld (alt_ld = 0 repeats one row, e.g. a row of zeros).
template <typename scalar_t>
struct RowSource {
  const scalar_t* prev;
  int64_t prev_ld, split;
  const scalar_t* alt;
  int64_t alt_ld;
  const scalar_t* row(int64_t r) const { return r < split ? prev + r * prev_ld : alt + r * alt_ld; }
};

template <typename scalar_t>
using Accumulators = at::vec::Vectorized<math_type<scalar_t>>[kPanelVecs];

// acc[r][j] = sum_k rows[r][k] * panel[k][j-th vector], for MR rows.
template <typename scalar_t, int MR>
inline void multiply_tile(const scalar_t* const* rows, int64_t K, const math_type<scalar_t>* panel,
                          Accumulators<scalar_t>* acc) {
  using math_t = math_type<scalar_t>;
  using Vec = at::vec::Vectorized<math_t>;
  constexpr int64_t W = Vec::size();
  Vec c[MR][kPanelVecs];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < kPanelVecs; ++j) c[r][j] = Vec(math_t(0));
  for (int64_t k = 0; k < K; ++k) {
    const math_t* b = panel + k * kPanelVecs * W;
    const Vec b0 = Vec::loadu(b), b1 = Vec::loadu(b + W), b2 = Vec::loadu(b + 2 * W),
              b3 = Vec::loadu(b + 3 * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const Vec a(static_cast<math_t>(rows[r][k]));
      c[r][0] = at::vec::fmadd(a, b0, c[r][0]);
      c[r][1] = at::vec::fmadd(a, b1, c[r][1]);
      c[r][2] = at::vec::fmadd(a, b2, c[r][2]);
      c[r][3] = at::vec::fmadd(a, b3, c[r][3]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < kPanelVecs; ++j) acc[r][j] = c[r][j];
}

// Picks the tile instantiation for `mr` (1..MR) rows.
template <typename scalar_t, int MR>
inline void multiply_tile_rows(int64_t mr, const scalar_t* const* rows, int64_t K,
                               const math_type<scalar_t>* panel, Accumulators<scalar_t>* acc) {
  if constexpr (MR > 1) {
    if (mr < MR) return multiply_tile_rows<scalar_t, MR - 1>(mr, rows, K, panel, acc);
  }
  multiply_tile<scalar_t, MR>(rows, K, panel, acc);
}

// For panels [panel_begin, panel_end) and rows [0, n) of A: computes each
// tile and calls epilogue(panel, first_row, rows, acc).
template <typename scalar_t, typename Epilogue>
void multiply_rows(const RowSource<scalar_t>& a, int64_t n, const Panels<math_type<scalar_t>>& b,
                   std::pair<int64_t, int64_t> panels, const Epilogue& epilogue) {
  constexpr int MR = kTileRows<math_type<scalar_t>>;
  for (int64_t p = panels.first; p < panels.second; ++p) {
    const math_type<scalar_t>* panel = b.panel(p);
    for (int64_t r0 = 0; r0 < n; r0 += MR) {
      const int64_t mr = std::min<int64_t>(MR, n - r0);
      const scalar_t* rows[MR];
      for (int64_t r = 0; r < mr; ++r) rows[r] = a.row(r0 + r);
      Accumulators<scalar_t> acc[MR];
      multiply_tile_rows<scalar_t, MR>(mr, rows, b.K, panel, acc);
      epilogue(p, r0, mr, acc);
    }
  }
}

// Requests, into L2, the cache lines of rows [0, n) x columns [begin, end) of
// a row-major matrix (leading dimension ld). The epilogues touch each row's
// four gate segments, 4H apart, over all rows of a step: more streams than
// the hardware prefetcher follows, so a step's per-row data is asked for when
// the step starts, while the products run.
enum class Access { kRead, kWrite };

template <Access access, typename T>
inline void prefetch_block(const T* base, int64_t n, int64_t ld, int64_t begin, int64_t end) {
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = begin; c < end; c += kLine) {
      if constexpr (access == Access::kRead) {
        __builtin_prefetch(base + r * ld + c, 0, 2);
      } else {
        __builtin_prefetch(base + r * ld + c, 1, 2);
      }
    }
}

// The threads that run one layer: every thread runs the same step loop on its
// own share of the panels, and barrier() separates the phases that read what
// other threads wrote. One parallel region per layer, not one per step.
struct Team {
  int id = 0, size = 1;
  void barrier() const {
#ifdef _OPENMP
    if (size > 1) {
#pragma omp barrier
    }
#endif
  }
  // This thread's share [begin, end) of `count` items.
  std::pair<int64_t, int64_t> share(int64_t count) const {
    return {count * id / size, count * (id + 1) / size};
  }
};

// Threads worth using for a layer with `macs` multiply-adds per step spread
// over at most `panels` panels. Below kMinMacsPerThread a thread's share of a
// step costs less than the barrier that ends it.
inline int team_size(int64_t macs, int64_t panels) {
  constexpr int64_t kMinMacsPerThread = 16384;
  if (at::in_parallel_region()) return 1;
  const int64_t useful = std::min<int64_t>(panels, std::max<int64_t>(1, macs / kMinMacsPerThread));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), useful)));
}

template <typename Body>
void run_team(int threads, const Body& body) {
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    body(Team{omp_get_thread_num(), omp_get_num_threads()});
    return;
  }
#endif
  body(Team{});
}

}  // namespace CPU_CAPABILITY
}  // namespace fusedlstm::cpu
