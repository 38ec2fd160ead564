// How the persistent kernels split one layer over a thread-block cluster,
// and where everything lives in each CTA's shared memory. Shared by the
// kernels, the host emulation, the tier selection and the launchers; no
// torch, no CUDA toolkit.
//
// Partition. A cluster of S CTAs computes B_c <= NB batch rows (one batch
// group; more clusters take more groups). CTA r owns the U hidden units
// r*U .. r*U+U-1 and all four gate rows of each, so the gate math and the
// cell update stay inside the CTA and c never leaves its registers. Units
// >= H are padding: zero weights, zero h. The CTA's 4U gate rows are
// gate-interleaved in 16-row tiles of 4 units x 4 gates: tile row
// 4*gate + j is gate `gate` of unit 4*mt + j of tile mt, so one mma.sync
// accumulator tile holds all four gates of 4 units (persistent_fwd.h reads
// them with one shuffle). With a projection CTA r also owns the output
// columns r*Up .. r*Up+Up-1 (else Up = U and the columns are its units).
// The h buffers are indexed by the global output column p; their width Kh
// covers S*Up (>= P) columns, padded to the 16 of an mma k-tile.
//
// Operands. Every product is D[m][n] = sum_k A[m][k] * B[n][k] with the
// batch as n (8 rows per n-tile, up to kMaxNTiles tiles: NB <= 32) and A a
// weight slice that stays in shared memory for the whole sequence:
//   forward   A = W_hh rows of the CTA's units (m: 4U gate rows, k: Kh)
//             A = W_hr rows of its output columns (m: Up, k: Kf = S*U padded)
//   backward  A = W_hh^T (m: Kh output columns, k: the CTA's 4U gate rows)
//             A = W_hr^T (m: U units, k: Kh)
// 16-bit A operands are stored as ready mma.sync fragments (one 16-byte load
// per lane and tile); float32 A operands row-major with 4 floats of padding
// per row. B operands are [n][k] row-major, padded by 16 bytes per row so
// that the 8 rows of a fragment load fall in different banks.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fusedlstm/layer_plan.h"
#include "persistent_context.h"

namespace fusedlstm::persistent {

constexpr int kMaxNTiles = 4;                     // n-tiles of 8 batch rows: NB <= 32
constexpr int kMaxMTilesPerWarp = 2;              // forward gate-row tiles per warp: U <= 64
constexpr int kMaxUnits = 4 * kWarps * kMaxMTilesPerWarp;
constexpr int kMaxClusterPortable = 8;            // cluster size without the non-portable attribute
constexpr int kMaxCluster = 16;                   // with it (sm_90)

FUSEDLSTM_HOST_DEVICE int ceil_div(int a, int b) { return (a + b - 1) / b; }
FUSEDLSTM_HOST_DEVICE int round_up(int a, int b) { return ceil_div(a, b) * b; }
FUSEDLSTM_HOST_DEVICE size_t align16(size_t bytes) { return (bytes + 15) / 16 * 16; }
FUSEDLSTM_HOST_DEVICE int clamp_rows(int64_t rows, int64_t first, int NB) {
  const int64_t n = rows - first;
  return n < 0 ? 0 : n > NB ? NB : int(n);
}

// Sizes that every CTA of one launch agrees on.
struct Partition {
  int H = 0, P = 0;     // hidden size, output size (P = H without a projection)
  bool proj = false;
  int S = 1;            // CTAs per cluster
  int NB = 8;           // batch rows per cluster (a multiple of 8)
  int U = 0;            // hidden units per CTA
  int Up = 0;           // output columns per CTA (U without a projection)
  int MT = 0;           // 16-row tiles of the CTA's 4U gate rows: U / 4
  int Kh = 0;           // width of the h buffers: S*Up rounded up to 16
  int Kf = 0;           // width of the whole-h buffer of the projection: S*U rounded up to 16
  int MTp = 0;          // 16-row tiles of the CTA's output columns: ceil(Up / 16)
  int MTu = 0;          // 16-row tiles of the CTA's units: ceil(U / 16)
  int elem_bytes = 4;   // 4 (float32) or 2 (bfloat16, float16)

  FUSEDLSTM_HOST_DEVICE int n_tiles() const { return NB / 8; }
  // B-operand row strides (elements): 16 bytes of padding.
  FUSEDLSTM_HOST_DEVICE int pad() const { return 16 / elem_bytes; }
  FUSEDLSTM_HOST_DEVICE int ldh() const { return Kh + pad(); }
  FUSEDLSTM_HOST_DEVICE int ldf() const { return Kf + pad(); }
  FUSEDLSTM_HOST_DEVICE int ldg() const { return 4 * U + pad(); }
};

// The partition of H hidden units and P output columns over S CTAs for NB
// batch rows per cluster. U and Up are multiples of the 16-byte exchange
// chunk (8 16-bit or 4 float32 values) and U of 4 (whole gate tiles).
inline Partition make_partition(int H, int P, bool proj, int S, int NB, int elem_bytes) {
  Partition p;
  p.H = H;
  p.P = P;
  p.proj = proj;
  p.S = S;
  p.NB = NB;
  p.elem_bytes = elem_bytes;
  const int chunk = 16 / elem_bytes;
  const int unit_align = chunk > 4 ? chunk : 4;
  p.U = round_up(ceil_div(H, S), unit_align);
  p.Up = proj ? round_up(ceil_div(P, S), chunk) : p.U;
  p.MT = p.U / 4;
  p.Kh = round_up(S * p.Up, 16);
  p.Kf = round_up(S * p.U, 16);
  p.MTp = ceil_div(p.Up, 16);
  p.MTu = ceil_div(p.U, 16);
  return p;
}

// --- A operands ------------------------------------------------------------------------------

// An M x K operand (M = 16 * m_tiles, K = 16 * k_tiles) in shared memory.
template <typename Num>
struct AOperand {
  using E = typename Num::storage;
  // Bytes of the operand.
  FUSEDLSTM_HOST_DEVICE static size_t bytes(int m_tiles, int k_tiles) {
    if constexpr (Num::kTensorCores) {
      return size_t(m_tiles) * k_tiles * kWarpSize * sizeof(AFrag);
    } else {
      return size_t(m_tiles) * 16 * (k_tiles * 16 + 4) * sizeof(float);
    }
  }
  // Element offset of A[row][k] (in E's).
  FUSEDLSTM_HOST_DEVICE static size_t index(int row, int k, int k_tiles) {
    if constexpr (Num::kTensorCores) {
      const AFragSlot s = a_frag_slot(row % 16, k % 16);
      const size_t tile = size_t(row / 16) * k_tiles + k / 16;
      return ((tile * kWarpSize + s.lane) * 4 + s.reg) * 2 + s.half;
    } else {
      return size_t(row) * (k_tiles * 16 + 4) + k;
    }
  }
  // Row stride (elements) of a float32 operand.
  FUSEDLSTM_HOST_DEVICE static int ld(int k_tiles) { return k_tiles * 16 + 4; }
};

// --- shared memory of one CTA ---------------------------------------------------------------

// Hands out consecutive 16-byte aligned ranges of shared memory.
struct SmemCursor {
  size_t at = 0;
  FUSEDLSTM_HOST_DEVICE size_t operator()(size_t bytes) {
    const size_t here = at;
    at += align16(bytes);
    return here;
  }
};

// Byte offsets of the forward kernel's buffers.
struct FwdSmem {
  size_t w = 0;         // A: W_hh slice, MT x Kh/16 tiles
  size_t wr = 0;        // A: W_hr slice, MTp x Kf/16 tiles (projection)
  size_t h[2] = {0, 0}; // B: [NB][ldh] h_prev of this step (parity k & 1) and the next (the same in the grid tier)
  size_t hfull = 0;     // B: [NB][ldf] the whole h of this step (projection)
  size_t stage = 0;     // [NB][U] this CTA's h slice, for the exchange
  size_t stage2 = 0;    // [NB][Up] this CTA's output slice, for the exchange (projection)
  size_t total = 0;
};

// The grid tier fetches h into one buffer at each step (no second h
// buffer); its dh_prev shares go straight to global memory (no staging or
// receive buffers).
template <typename Num>
FUSEDLSTM_HOST_DEVICE FwdSmem fwd_smem(const Partition& p, bool grid) {
  using E = typename Num::storage;
  FwdSmem s;
  SmemCursor take;
  s.w = take(AOperand<Num>::bytes(p.MT, p.Kh / 16));
  s.wr = p.proj ? take(AOperand<Num>::bytes(p.MTp, p.Kf / 16)) : 0;
  s.h[0] = take(size_t(p.NB) * p.ldh() * sizeof(E));
  s.h[1] = grid ? s.h[0] : take(size_t(p.NB) * p.ldh() * sizeof(E));
  s.hfull = p.proj ? take(size_t(p.NB) * p.ldf() * sizeof(E)) : 0;
  s.stage = take(size_t(p.NB) * p.U * sizeof(E));
  s.stage2 = p.proj ? take(size_t(p.NB) * p.Up * sizeof(E)) : 0;
  s.total = take.at;
  return s;
}

// Byte offsets of the backward kernel's buffers.
struct BwdSmem {
  size_t wt = 0;        // A: W_hh^T slice, Kh/16 x MT tiles
  size_t wrt = 0;       // A: W_hr^T slice, MTu x Kh/16 tiles (projection)
  size_t dg = 0;        // B: [NB][ldg] the step's gate gradients (gate-interleaved rows)
  size_t partial = 0;   // float [S][NB][Up]: this CTA's share of dh_prev, per owner CTA (cluster tier)
  size_t recv[2] = {0, 0};  // float [S][NB][Up]: the shares of every CTA for this CTA's columns (cluster tier)
  size_t dh_next = 0;   // float [NB][Up]: reduced dh_prev, the dh of the step processed next
  size_t dh_cell = 0;   // float [NB][U]: dL/dh of the step's cells
  size_t dh_out = 0;    // B: [NB][ldh] the whole dL/d(output) of the step (projection)
  size_t dh_stage = 0;  // [NB][Up] this CTA's slice of it, for the exchange (projection)
  size_t total = 0;
};

template <typename Num>
FUSEDLSTM_HOST_DEVICE BwdSmem bwd_smem(const Partition& p, bool grid) {
  using E = typename Num::storage;
  BwdSmem s;
  SmemCursor take;
  const size_t shares = size_t(p.S) * p.NB * p.Up * sizeof(float);
  s.wt = take(AOperand<Num>::bytes(p.Kh / 16, p.MT));
  s.wrt = p.proj ? take(AOperand<Num>::bytes(p.MTu, p.Kh / 16)) : 0;
  s.dg = take(size_t(p.NB) * p.ldg() * sizeof(E));
  s.partial = grid ? 0 : take(shares);
  s.recv[0] = grid ? 0 : take(shares);
  s.recv[1] = grid ? 0 : take(shares);
  s.dh_next = take(size_t(p.NB) * p.Up * sizeof(float));
  s.dh_cell = take(size_t(p.NB) * p.U * sizeof(float));
  s.dh_out = p.proj ? take(size_t(p.NB) * p.ldh() * sizeof(E)) : 0;
  s.dh_stage = p.proj ? take(size_t(p.NB) * p.Up * sizeof(E)) : 0;
  s.total = take.at;
  return s;
}

// --- global memory of the grid tier ----------------------------------------------------------

// The exchange buffers of the grid tier, in global memory, for every batch
// group of the layer (null in the cluster tier). Allocated by the launcher,
// counters zeroed before the launch.
template <typename E>
struct GridBuffers {
  Counter* counters = nullptr;           // [groups]: arrivals at the group's grid barriers
  E* h0 = nullptr;                       // [groups][NB][Kh]: h of the step, parity 0 (forward)
  E* h1 = nullptr;                       // ... parity 1
  E* hfull = nullptr;                    // [groups][NB][Kf]: the whole h (forward, projection)
  float* shares0 = nullptr;              // [groups][S owner][S from][NB][Up]: dh_prev shares, parity 0 (backward)
  float* shares1 = nullptr;              // ... parity 1
  E* dh_out = nullptr;                   // [groups][NB][Kh]: dL/d(output) (backward, projection)
};

// Elements of each grid-tier buffer for `groups` batch groups.
struct GridSizes {
  size_t h, hfull, shares, dh_out;
};
inline GridSizes grid_sizes(const Partition& p, int groups) {
  const size_t g = size_t(groups), rows = g * p.NB;
  return GridSizes{rows * p.Kh, p.proj ? rows * p.Kf : 0, g * p.S * p.S * p.NB * p.Up, p.proj ? rows * p.Kh : 0};
}

// --- the layer plan, as the kernels read it ---------------------------------------------------

// StepPlan k (layer_plan.h): read from a [T, 4] int64 table (packed input),
// or computed (dense input: B rows at every step, no table).
struct PlanView {
  const StepPlan* table = nullptr;
  int64_t T = 0, B = 0;
  bool reverse = false;

  FUSEDLSTM_HOST_DEVICE StepPlan at(int64_t k) const {
    if (table) return table[k];
    const int64_t t = reverse ? T - 1 - k : k;
    StepPlan s;
    s.offset = t * B;
    s.rows = B;
    s.continuing = k > 0 ? B : 0;
    s.prev_offset = k > 0 ? (reverse ? t + 1 : t - 1) * B : 0;
    return s;
  }
  // Rows b < continuing_after(k) of step k go on into the step processed
  // after it (none after the last).
  FUSEDLSTM_HOST_DEVICE int64_t continuing_after(int64_t k) const {
    return k + 1 < T ? at(k + 1).continuing : 0;
  }
};

}  // namespace fusedlstm::persistent
