// The persistent LSTM kernels' vocabulary, shared by the step code
// (persistent_fwd.h, persistent_bwd.h) and the two execution contexts that
// run it: the device context (persistent_device.cuh: a real CUDA thread-block
// cluster) and the host context (persistent_host.h: one CPU thread per CTA).
// Nothing here depends on torch or on the CUDA toolkit.
//
// The step code is written once, as templates over an execution context
// `Ctx`, in the SIMT style of a CUDA kernel but with every per-thread value
// that lives across a collective held in `typename Ctx::template Reg<T>`:
// one T per thread. On the device a Reg<T> is that thread's own T (a
// register); on the host it is an array of kThreads values, one per
// emulated thread. Code runs per thread inside
//
//   ctx.each([&](Thread t) { ... r[t] ... });           every thread of the CTA
//   ctx.each_warp([&](auto& w) {                         every warp
//     w.each([&](Thread t) { ... });                     every lane of warp w
//     w.shfl_xor(out, in, mask); w.mma<Num>(acc, a, b);  warp collectives
//   });
//
// and the collectives sit outside the per-thread lambdas, so they are
// warp-uniform by construction. On the device each() and each_warp() call
// their lambda once, for the calling thread; on the host they loop over the
// CTA's threads / warps in order, which is a valid schedule of the same
// program because threads only communicate through shared memory across a
// barrier (ctx.sync_cta, ctx.sync_cluster) or through the warp collectives.
// Shared memory is read and written through ctx.ld / ctx.st (own CTA) and
// ctx.st_peer (another CTA of the cluster, distributed shared memory), so
// that the host context can check every access for races.
//
// The same step code runs in two tiers (the template flag kGrid):
//   cluster tier  the CTAs of a thread-block cluster exchange through each
//                 other's shared memory (st_peer) and meet at cluster
//                 barriers (ctx.sync_cluster)
//   grid tier     the CTAs of a cooperative launch (at most one per SM)
//                 exchange through global memory (plain stores, ld_global
//                 reads that bypass L1) and meet at ctx.sync_grid: a
//                 counter per batch group that only grows (release add,
//                 acquire spin), never reset during the launch
#pragma once

#include <cstdint>
#include <cstring>

#include "fusedlstm/gate_math.h"

// Step code: device functions under nvcc (only kernels run it there), plain
// inline functions under a host compiler (the host context runs it).
#if defined(__CUDACC__)
#define FUSEDLSTM_STEP __device__ __forceinline__
#define FUSEDLSTM_UNROLL _Pragma("unroll")
#else
#define FUSEDLSTM_STEP inline
#define FUSEDLSTM_UNROLL
#endif

namespace fusedlstm::persistent {

// Threads per CTA of every persistent kernel: 8 warps. Each warp owns whole
// 16-row tiles of the CTA's matrix operands (persistent_layout.h).
constexpr int kWarpSize = 32;
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * kWarpSize;

// The grid tier's barrier counter (one per batch group, in global memory).
using Counter = unsigned long long;

// One thread of a CTA.
struct Thread {
  int tid;
  FUSEDLSTM_HOST_DEVICE int lane() const { return tid & (kWarpSize - 1); }
  FUSEDLSTM_HOST_DEVICE int warp() const { return tid / kWarpSize; }
};

// Every barrier of the step code, named: the host context checks that all
// CTAs of a cluster meet at the same one, and a test can drop one kind to
// show that the race checks catch its absence.
enum class Barrier : int {
  kStart,          // cluster: every CTA's shared memory initialised before any peer writes into it
  kStepStart,      // CTA: rows that start this step have their h0 in the h buffer
  kStaged,         // CTA: this step's h (or partial products) staged for the exchange
  kHExchanged,     // cluster: h slices of this step are in every CTA's buffer (projection)
  kProjStaged,     // CTA: the projected output staged for the exchange
  kStepEnd,        // cluster: the exchange of this step is complete everywhere
  kDh,             // CTA: dL/dh of the step's cells is in shared memory (backward)
  kGates,          // CTA: the step's gate gradients are staged for the recurrent product
  kDhOutStaged,    // CTA: dL/d(output) slice staged for the exchange (backward, projection)
  kDhOutExchanged, // cluster: every CTA holds the whole dL/d(output) (backward, projection)
  kFetched,        // CTA: rows read from global memory are in shared memory (grid tier)
  kCount
};

inline const char* barrier_name(Barrier b) {
  switch (b) {
    case Barrier::kStart: return "start";
    case Barrier::kStepStart: return "step_start";
    case Barrier::kStaged: return "staged";
    case Barrier::kHExchanged: return "h_exchanged";
    case Barrier::kProjStaged: return "proj_staged";
    case Barrier::kStepEnd: return "step_end";
    case Barrier::kDh: return "dh";
    case Barrier::kGates: return "gates";
    case Barrier::kDhOutStaged: return "dh_out_staged";
    case Barrier::kDhOutExchanged: return "dh_out_exchanged";
    case Barrier::kFetched: return "fetched";
    default: return "?";
  }
}

// --- number formats ----------------------------------------------------------------------------
//
// Element types of a kernel: F32 (FFMA, no tensor cores), BF16 and F16
// (mma.sync m16n8k16 with float accumulation). 16-bit values are handled as
// their bits (uint16_t), converted to and from float with round to nearest
// even, as the device's cvt.rn does; math is in float everywhere.

struct F32 {
  using storage = float;
  static constexpr bool kTensorCores = false;
  static constexpr const char* kName = "float32";
  FUSEDLSTM_HOST_DEVICE static float to_float(float x) { return x; }
  FUSEDLSTM_HOST_DEVICE static float from_float(float x) { return x; }
};

FUSEDLSTM_HOST_DEVICE uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

FUSEDLSTM_HOST_DEVICE float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

struct BF16 {
  using storage = uint16_t;
  static constexpr bool kTensorCores = true;
  static constexpr const char* kName = "bfloat16";
  FUSEDLSTM_HOST_DEVICE static float to_float(uint16_t x) { return bits_float(uint32_t(x) << 16); }
  FUSEDLSTM_HOST_DEVICE static uint16_t from_float(float x) {
    const uint32_t u = float_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
    return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);                 // nearest, ties to even
  }
};

struct F16 {
  using storage = uint16_t;
  static constexpr bool kTensorCores = true;
  static constexpr const char* kName = "float16";
  FUSEDLSTM_HOST_DEVICE static float to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {  // zero or subnormal: m * 2^-24, exact in float
      const float v = float(m) * 5.9604644775390625e-08f;
      return sign ? -v : v;
    }
    if (e == 31) return bits_float(sign | 0x7f800000u | (m << 13));
    return bits_float(sign | ((e + 112u) << 23) | (m << 13));
  }
  FUSEDLSTM_HOST_DEVICE static uint16_t from_float(float x) {
    const uint32_t u = float_bits(x), sign = (u >> 16) & 0x8000u, mag = u & 0x7fffffffu;
    if (mag >= 0x7f800000u) return uint16_t(sign | (mag > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (mag >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to 65536 or more: inf
    if (mag < 0x38800000u) {                                   // below 2^-14: a subnormal result
      if (mag < 0x33000000u) return uint16_t(sign);            // below 2^-25: zero
      const uint32_t m = (mag & 0x7fffffu) | 0x800000u, shift = 126u - (mag >> 23);
      uint32_t r = m >> shift;
      const uint32_t rest = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
      if (rest > half || (rest == half && (r & 1u))) ++r;
      return uint16_t(sign | r);
    }
    const uint32_t r = mag - 0x38000000u;  // exponent rebiased from 127 to 15
    return uint16_t(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
  }
};

// --- warp-level fragments of mma.sync.m16n8k16 (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type") --------------------------------------------------------
//
// A warp multiplies A [16 x 16] (row-major) by B [16 x 8] (column-major) and
// accumulates into C/D [16 x 8] in float. With g = lane / 4 and q = lane % 4,
// the lane holds (element i of its fragment):
//   A: 4 registers of two 16-bit values, a0..a7: row g (a0,a1,a4,a5) or g+8
//      (a2,a3,a6,a7); column 2q + (i & 1), plus 8 for a4..a7.
//   B: 2 registers, b0..b3: row (k) 2q + (i & 1), plus 8 for b2,b3; column g.
//   C/D: 4 floats c0..c3: row g (c0,c1) or g+8 (c2,c3); column 2q + (i & 1).
// The host context's mma (persistent_host.h) reads the fragments through
// exactly these rules; the packing below is their inverse, written
// separately, so that the emulation checks the packing.

struct alignas(16) AFrag {
  uint32_t r[4];
};
struct alignas(8) BFrag {
  uint32_t r[2];
};
struct Acc {
  float v[4];
};

// Where element (row, col) of a 16 x 16 A tile lives in the fragments.
struct AFragSlot {
  int lane, reg, half;
};
FUSEDLSTM_HOST_DEVICE AFragSlot a_frag_slot(int row, int col) {
  return AFragSlot{(row % 8) * 4 + (col % 8) / 2, row / 8 + 2 * (col / 8), col % 2};
}

// Two 16-bit values as one 32-bit register, the lower one (lower column or
// row index) in the low half.
FUSEDLSTM_HOST_DEVICE uint32_t pack_pair(uint16_t lo, uint16_t hi) {
  return uint32_t(lo) | (uint32_t(hi) << 16);
}

// A 16-byte chunk: the unit of the exchanges between CTAs.
struct alignas(16) Chunk16 {
  uint32_t w[4];
};

}  // namespace fusedlstm::persistent
