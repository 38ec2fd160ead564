// Building blocks of the persistent kernels' step code, shared by the
// forward (persistent_fwd.h) and the backward (persistent_bwd.h): loading a
// weight slice into shared memory once, one warp's tile of a product, the
// mapping of a gate tile's accumulators to cells, and the exchange of staged
// rows between the CTAs of a cluster. Templates over the execution context
// (persistent_context.h).
#pragma once

#include "persistent_context.h"
#include "persistent_layout.h"

namespace fusedlstm::persistent {

template <typename Ctx, typename T>
using RegOf = typename Ctx::template Reg<T>;

// Zero bytes [begin, end) of this CTA's shared memory (16-byte aligned).
template <typename Ctx>
FUSEDLSTM_STEP void zero_smem(Ctx& ctx, size_t begin, size_t end) {
  auto* first = reinterpret_cast<Chunk16*>(ctx.smem() + begin);
  const int64_t chunks = int64_t(end - begin) / int64_t(sizeof(Chunk16));
  ctx.each([&](Thread t) {
    for (int64_t e = t.tid; e < chunks; e += kThreads) ctx.st(t, first + e, Chunk16{{0, 0, 0, 0}});
  });
}

// Fill the A operand at `a` (rows x 16*k_tiles, AOperand layout) with
// value(row, k), as E. Runs once per launch: the weights then stay.
template <typename Num, typename Ctx, typename Value>
FUSEDLSTM_STEP void load_a_operand(Ctx& ctx, typename Num::storage* a, int rows, int k_tiles,
                                   const Value& value) {
  const int K = 16 * k_tiles;
  const int64_t total = int64_t(rows) * K;
  ctx.each([&](Thread t) {
    for (int64_t e = t.tid; e < total; e += kThreads) {
      const int row = int(e / K), k = int(e % K);
      ctx.st(t, a + AOperand<Num>::index(row, k, k_tiles), value(row, k));
    }
  });
}

struct alignas(16) Float4 {
  float v[4];
};

// One warp's share of D = A * B^T: acc[nt] = rows 16*mt .. 16*mt+15 of A times
// batch rows 8*nt .. 8*nt+7 of B, for nt < n_tiles, over 16*k_tiles columns.
// A: AOperand layout; B: [n][ldb] row-major. acc is in the C/D fragment
// layout of mma.sync m16n8k16 (persistent_context.h) for both number
// formats: tensor cores for 16-bit types, FFMA for float32 (each lane then
// computes exactly the four accumulators that mma.sync would give it).
template <typename Num, typename Ctx, typename Warp>
FUSEDLSTM_STEP void tile_product(Ctx& ctx, Warp& w, const typename Num::storage* a, int mt, int k_tiles,
                                 const typename Num::storage* b, int ldb, int n_tiles,
                                 RegOf<Ctx, Acc> (&acc)[kMaxNTiles]) {
  using E = typename Num::storage;
  w.each([&](Thread t) {
FUSEDLSTM_UNROLL
    for (int nt = 0; nt < kMaxNTiles; ++nt) acc[nt][t] = Acc{{0.f, 0.f, 0.f, 0.f}};
  });
  if constexpr (Num::kTensorCores) {
    RegOf<Ctx, AFrag> af;
    RegOf<Ctx, BFrag> bf[kMaxNTiles];
    const auto* frags = reinterpret_cast<const AFrag*>(a) + size_t(mt) * k_tiles * kWarpSize;
    for (int kt = 0; kt < k_tiles; ++kt) {
      w.each([&](Thread t) {
        const int lane = t.lane(), g = lane >> 2, q = lane & 3;
        af[t] = ctx.ld(t, frags + size_t(kt) * kWarpSize + lane);
FUSEDLSTM_UNROLL
        for (int nt = 0; nt < kMaxNTiles; ++nt) {
          if (nt < n_tiles) {
            const E* row = b + size_t(nt * 8 + g) * ldb + kt * 16 + 2 * q;
            bf[nt][t].r[0] = ctx.ld(t, reinterpret_cast<const uint32_t*>(row));
            bf[nt][t].r[1] = ctx.ld(t, reinterpret_cast<const uint32_t*>(row + 8));
          }
        }
      });
FUSEDLSTM_UNROLL
      for (int nt = 0; nt < kMaxNTiles; ++nt) {
        if (nt < n_tiles) w.template mma<Num>(acc[nt], af, bf[nt]);
      }
    }
  } else {
    const int lda = AOperand<Num>::ld(k_tiles), K = 16 * k_tiles;
    w.each([&](Thread t) {
      const int lane = t.lane(), g = lane >> 2, q = lane & 3;
      const float* a0 = a + size_t(mt * 16 + g) * lda;
      const float* a1 = a0 + size_t(8) * lda;
      for (int k = 0; k < K; k += 4) {
        const Float4 w0 = ctx.ld(t, reinterpret_cast<const Float4*>(a0 + k));
        const Float4 w1 = ctx.ld(t, reinterpret_cast<const Float4*>(a1 + k));
FUSEDLSTM_UNROLL
        for (int nt = 0; nt < kMaxNTiles; ++nt) {
          if (nt < n_tiles) {
            const float* b0 = b + size_t(nt * 8 + 2 * q) * ldb + k;
            const Float4 h0 = ctx.ld(t, reinterpret_cast<const Float4*>(b0));
            const Float4 h1 = ctx.ld(t, reinterpret_cast<const Float4*>(b0 + ldb));
            Acc& c = acc[nt][t];
FUSEDLSTM_UNROLL
            for (int j = 0; j < 4; ++j) {
              c.v[0] += w0.v[j] * h0.v[j];
              c.v[1] += w0.v[j] * h1.v[j];
              c.v[2] += w1.v[j] * h0.v[j];
              c.v[3] += w1.v[j] * h1.v[j];
            }
          }
        }
      }
    });
  }
}

// Element i of a lane's accumulator tile: its row in the 16-row tile and
// its batch row (column) in the 8-row n-tile.
FUSEDLSTM_HOST_DEVICE int acc_row(int lane, int i) { return (lane >> 2) + 8 * (i >> 1); }
FUSEDLSTM_HOST_DEVICE int acc_col(int lane, int i) { return 2 * (lane & 3) + (i & 1); }

// D = A * B^T over all of A's m_tiles 16-row tiles, shared out to the warps
// (tile mt to warp mt % kWarps), then store(t, row, n, value) for each
// accumulator: row of A, batch row n (< 8 * n_tiles) of B.
template <typename Num, typename Ctx, typename Store>
FUSEDLSTM_STEP void product_rows(Ctx& ctx, const typename Num::storage* a, int m_tiles, int k_tiles,
                                 const typename Num::storage* b, int ldb, int n_tiles, const Store& store) {
  ctx.each_warp([&](auto& wp) {
    for (int mt = wp.id; mt < m_tiles; mt += kWarps) {
      RegOf<Ctx, Acc> acc[kMaxNTiles];
      tile_product<Num>(ctx, wp, a, mt, k_tiles, b, ldb, n_tiles, acc);
      wp.each([&](Thread t) {
        FUSEDLSTM_UNROLL
        for (int nt = 0; nt < kMaxNTiles; ++nt) {
          if (nt >= n_tiles) continue;
          FUSEDLSTM_UNROLL
          for (int e = 0; e < 4; ++e) {
            store(t, mt * 16 + acc_row(t.lane(), e), nt * 8 + acc_col(t.lane(), e), acc[nt][t].v[e]);
          }
        }
      });
    }
  });
}

// f(warp, i, mt) for the gate tiles mt = warp.id + i * kWarps < MT of every
// warp: i < kMaxMTilesPerWarp indexes the tile's cells in the registers.
template <typename Ctx, typename F>
FUSEDLSTM_STEP void for_each_gate_tile(Ctx& ctx, int MT, const F& f) {
  ctx.each_warp([&](auto& wp) {
    FUSEDLSTM_UNROLL
    for (int i = 0; i < kMaxMTilesPerWarp; ++i) {
      const int mt = wp.id + i * kWarps;
      if (mt < MT) f(wp, i, mt);
    }
  });
}

// The cell (unit, batch row) that a lane handles in a gate tile: after the
// gate gather (persistent_fwd.h), lane (g, q) holds unit g % 4 of the tile
// for batch row 2q (g < 4) or 2q + 1 (g >= 4).
FUSEDLSTM_HOST_DEVICE int cell_unit(int lane) { return (lane >> 2) & 3; }
FUSEDLSTM_HOST_DEVICE int cell_col(int lane) { return 2 * (lane & 3) + ((lane >> 2) >> 2); }

// move(t, copy, n, c) for every 16-byte chunk c of rows n < rows of copies
// copy < copies, shared out to the CTA's threads.
template <typename Ctx, typename Move>
FUSEDLSTM_STEP void for_each_chunk(Ctx& ctx, int copies, int rows, int chunks, const Move& move) {
  const int per_copy = rows * chunks;
  ctx.each([&](Thread t) {
    for (int e = t.tid; e < copies * per_copy; e += kThreads) {
      const int rest = e % per_copy;
      move(t, e / per_copy, rest / chunks, rest % chunks);
    }
  });
}

template <typename E>
FUSEDLSTM_HOST_DEVICE constexpr int chunks_of(int width) {
  return width * int(sizeof(E)) / int(sizeof(Chunk16));
}

// Cluster tier: copy `rows` rows of `width` elements from this CTA's `src`
// (row-major, stride `width`; plus peer * src_peer_stride elements for each
// destination peer) to columns col0 .. col0+width-1 of rows 0 .. rows-1 of
// `dst` (stride `ld_dst`) in the shared memory of every CTA of the cluster,
// own included, in 16-byte chunks (st.shared::cluster through mapa
// addresses on the device). Destinations rotate, starting after this CTA,
// to spread the traffic.
template <typename Ctx, typename E>
FUSEDLSTM_STEP void push_rows(Ctx& ctx, const E* src, size_t src_peer_stride, int width, int rows, E* dst,
                              int ld_dst, int col0) {
  const int S = ctx.cluster_size(), me = ctx.cta_rank();
  for_each_chunk(ctx, S, rows, chunks_of<E>(width), [&](Thread t, int copy, int n, int c) {
    const int peer = (me + 1 + copy) % S;
    const auto* from = reinterpret_cast<const Chunk16*>(src + peer * src_peer_stride + size_t(n) * width) + c;
    auto* to = reinterpret_cast<Chunk16*>(dst + size_t(n) * ld_dst + col0) + c;
    const Chunk16 v = ctx.ld(t, from);
    if (peer == me) {
      ctx.st(t, to, v);
    } else {
      ctx.st_peer(t, peer, to, v);
    }
  });
}

// Grid tier: the same rows to global memory, once per copy: copy i of
// src + i * src_copy_stride goes to columns col0.. of dst + i * dst_copy_stride
// (row stride ld_dst).
template <typename Ctx, typename E>
FUSEDLSTM_STEP void publish_rows(Ctx& ctx, int copies, const E* src, size_t src_copy_stride, int width, int rows,
                                 E* dst, size_t dst_copy_stride, int ld_dst, int col0) {
  for_each_chunk(ctx, copies, rows, chunks_of<E>(width), [&](Thread t, int copy, int n, int c) {
    const auto* from = reinterpret_cast<const Chunk16*>(src + copy * src_copy_stride + size_t(n) * width) + c;
    *(reinterpret_cast<Chunk16*>(dst + copy * dst_copy_stride + size_t(n) * ld_dst + col0) + c) = ctx.ld(t, from);
  });
}

// Grid tier: rows 0 .. rows-1 (width elements) of a global buffer (stride
// ld_src) into this CTA's shared memory (stride ld_dst).
template <typename Ctx, typename E>
FUSEDLSTM_STEP void fetch_rows(Ctx& ctx, const E* src, int ld_src, int width, int rows, E* dst, int ld_dst) {
  for_each_chunk(ctx, 1, rows, chunks_of<E>(width), [&](Thread t, int, int n, int c) {
    ctx.st(t, reinterpret_cast<Chunk16*>(dst + size_t(n) * ld_dst) + c,
           ctx.ld_global(t, reinterpret_cast<const Chunk16*>(src + size_t(n) * ld_src) + c));
  });
}

// The grid tier's barrier state of one CTA: its batch group's counter and
// how often it has arrived (the targets only grow).
struct GridSync {
  Counter* counter = nullptr;
  int S = 1;
  Counter arrivals = 0;

  template <typename Ctx>
  FUSEDLSTM_STEP void wait(Ctx& ctx, Barrier label) {
    ctx.sync_grid(label, counter, ++arrivals * Counter(S));
  }
};

// The all-gather of the step code: this CTA's slice (rows x width at src,
// stride width) lands at columns col0.. of rows 0..rows-1 of `dst` (shared
// memory, stride ld_dst) in every CTA of the batch group, ordered by barrier
// `label`. Cluster tier: pushed into each CTA's shared memory. Grid tier:
// written into `global` (stride ld_global: all the group's slices side by
// side), and after the barrier the S slices of each row are read back into
// `dst`.
template <bool kGrid, typename Ctx, typename E>
FUSEDLSTM_STEP void all_gather(Ctx& ctx, GridSync& grid, Barrier label, const E* src, int width, int rows, E* dst,
                               int ld_dst, int col0, E* global, int ld_global) {
  if constexpr (kGrid) {
    publish_rows(ctx, 1, src, 0, width, rows, global, 0, ld_global, col0);
    grid.wait(ctx, label);
    // The S slices only: the padding beyond them is never written there and
    // stays zero here.
    fetch_rows(ctx, global, ld_global, grid.S * width, rows, dst, ld_dst);
    ctx.sync_cta(Barrier::kFetched);
  } else {
    push_rows(ctx, src, 0, width, rows, dst, ld_dst, col0);
    ctx.sync_cluster(label);
  }
}

}  // namespace fusedlstm::persistent
