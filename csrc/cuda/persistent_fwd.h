// The persistent LSTM forward: the work of one CTA for a whole layer and
// direction, written once over an execution context (the device's in
// persistent_kernels.cu, the host's in persistent_host.h).
//
// Per launch, each CTA loads its slice of W_hh (and of W_hr) into shared
// memory once (persistent_layout.h: the partition and the layouts). Then,
// per step k of the plan (processing order; rows b < rows_k of the cluster's
// batch group take part, the others do no work):
//   1. rows that start at this step put h0 in the h buffer of parity k and
//      their c0 in the cell registers; each thread fetches the x_proj
//      values of its cells (4 gates each)
//   2. each warp multiplies its gate tiles of W_hh by h_prev (mma.sync with
//      the batch as N for bfloat16/float16, FFMA for float32), one shuffle
//      gathers the four gates of a cell into one lane, and the lane
//      computes the gates, c (kept in registers across steps) and h, and
//      writes acts, cells, h / h_raw, h_n and c_n
//   3. without a projection, the CTA's new h slice goes into the h buffer
//      of parity k + 1 of every CTA (distributed shared memory); one
//      cluster barrier ends the step. With one, the h slices are first
//      gathered whole in every CTA (first exchange), each CTA projects its
//      columns of the output (W_hr slice times h, a second product), and the
//      output slices go into the next h buffers (second exchange).
// The buffers of parity k are read only before a CTA reaches the step's
// final barrier and written by peers only after they pass it, so one
// barrier per step (two with a projection) orders everything.
//
// The grid tier (kGrid; layers beyond a cluster's shared memory) is the same
// step with the exchange through global memory (all_gather): each CTA
// writes its slice once into the group's global h buffer of parity k + 1, a
// grid barrier (the group's counter) ends the step, and each CTA reads all
// the slices back into its (single) shared-memory h buffer.
//
// Numbers: float32 throughout on FFMA (the product is IEEE fp32; TF32 is
// not used); for bfloat16/float16 the products take 16-bit inputs with float
// accumulation, x_proj is added and the gate math runs in float, c stays in
// float across steps, and h is rounded to the 16-bit type once, where the
// per-step path rounds it too (it is the next step's product input).
//
// Latency per step, an estimate (no GPU figures yet): a cluster barrier and
// the DSMEM exchange before it ~0.2-0.5 us; the product: with W_hh in shared
// memory each CTA reads its slice once per step, 8*U*Kh bytes in bfloat16
// (U = 32, Kh = 256: 64 KB, ~512 cycles at 128 B/cycle, ~0.3 us at 1.8 GHz)
// and 16*U*(Kh+4) in float32 (~0.6 us), plus the mma.sync / FFMA chain of
// Kh/16 dependent tiles; gate math ~0.1 us.
#pragma once

#include "persistent_step.h"

namespace fusedlstm::persistent {

// Arguments of the forward kernel (the op contract's lstm_layer_fwd;
// row-major, contiguous). Row indices are int64: rows * 4H may pass 2^31.
template <typename Num>
struct FwdParams {
  using E = typename Num::storage;
  Partition part;
  PlanView plan;
  int first_group = 0;      // batch group of the launch's first cluster (grid tier: one launch per few groups)
  GridBuffers<E> grid;      // grid tier only
  bool save = true;
  const E* x_proj = nullptr;  // [rows, 4H]
  const E* w_hh = nullptr;    // [4H, P]
  const E* w_hr = nullptr;    // [P, H] (projection) or null
  const E* h0 = nullptr;      // [B, P]
  const E* c0 = nullptr;      // [B, H]
  E* output = nullptr;        // [rows, P]
  E* h_n = nullptr;           // [B, P]
  E* c_n = nullptr;           // [B, H]
  E* acts = nullptr;          // [rows, 4H] (save) or null
  E* cells = nullptr;         // [rows, H] (save) or null
  E* h_raw = nullptr;         // [rows, H] (save with a projection) or null
};

template <typename Num, bool kGrid, typename Ctx>
FUSEDLSTM_STEP void forward_cta(Ctx& ctx, const FwdParams<Num>& p) {
  using E = typename Num::storage;
  const Partition& q = p.part;
  const int H = q.H, P = q.P, U = q.U, Up = q.Up, NB = q.NB, S = q.S, r = ctx.cta_rank();
  const int group = p.first_group + ctx.cluster_id();
  const int64_t G = 4 * int64_t(H), b0 = int64_t(group) * NB;
  const int ldh = q.ldh(), ldf = q.ldf(), kh_tiles = q.Kh / 16, kf_tiles = q.Kf / 16;
  const FwdSmem L = fwd_smem<Num>(q, kGrid);
  unsigned char* smem = ctx.smem();
  E* const w = reinterpret_cast<E*>(smem + L.w);
  E* const wr = reinterpret_cast<E*>(smem + L.wr);
  E* const hbuf0 = reinterpret_cast<E*>(smem + L.h[0]);
  E* const hbuf1 = reinterpret_cast<E*>(smem + L.h[1]);
  E* const hfull = reinterpret_cast<E*>(smem + L.hfull);
  E* const stage = reinterpret_cast<E*>(smem + L.stage);
  E* const stage2 = reinterpret_cast<E*>(smem + L.stage2);

  // W_hh rows of this CTA's units, gate-interleaved: tile row 4*gate + j is
  // gate `gate` of unit 4*mt + j. Padding (units >= H, columns >= P) is zero.
  load_a_operand<Num>(ctx, w, 4 * U, kh_tiles, [&](int row, int k) {
    const int gate = (row % 16) / 4, u = r * U + (row / 16) * 4 + row % 4;
    return u < H && k < P ? p.w_hh[(gate * int64_t(H) + u) * P + k] : Num::from_float(0.f);
  });
  if (q.proj) {  // W_hr rows of this CTA's output columns
    load_a_operand<Num>(ctx, wr, 16 * q.MTp, kf_tiles, [&](int row, int k) {
      const int col = r * Up + row;
      return row < Up && col < P && k < H ? p.w_hr[int64_t(col) * H + k] : Num::from_float(0.f);
    });
  }
  zero_smem(ctx, L.h[0], L.total);
  RegOf<Ctx, float> c[kMaxMTilesPerWarp][kMaxNTiles];  // cell states of this thread's cells
  RegOf<Ctx, Acc> xp[kMaxMTilesPerWarp][kMaxNTiles];   // their x_proj values, gates i, f, g, o
  ctx.each([&](Thread t) {
    FUSEDLSTM_UNROLL
    for (int i = 0; i < kMaxMTilesPerWarp; ++i) {
      FUSEDLSTM_UNROLL
      for (int nt = 0; nt < kMaxNTiles; ++nt) c[i][nt][t] = 0.f;
    }
  });
  // Grid tier: this group's exchange buffers and barrier count.
  E* const g_h0 = kGrid ? p.grid.h0 + size_t(group) * NB * q.Kh : nullptr;
  E* const g_h1 = kGrid ? p.grid.h1 + size_t(group) * NB * q.Kh : nullptr;
  E* const g_hfull = kGrid && q.proj ? p.grid.hfull + size_t(group) * NB * q.Kf : nullptr;
  GridSync gsync{kGrid ? p.grid.counters + group : nullptr, S};
  if constexpr (kGrid) {
    ctx.sync_cta(Barrier::kStart);  // no CTA writes into another's shared memory
  } else {
    ctx.sync_cluster(Barrier::kStart);
  }

  int64_t done = 0;  // steps processed so far: the parity of the h buffers
  for (int64_t k = 0; k < p.plan.T; ++k) {
    const StepPlan sp = p.plan.at(k);
    const int n_act = clamp_rows(sp.rows, b0, NB);
    if (n_act == 0) continue;  // the same for every CTA of the cluster
    const int n_cont = clamp_rows(sp.continuing, b0, NB);
    const int n_end = clamp_rows(p.plan.continuing_after(k), b0, NB);  // rows n >= n_end end here
    const int n_tiles = ceil_div(n_act, 8);
    const bool last = k + 1 == p.plan.T;
    E* const h_cur = done % 2 ? hbuf1 : hbuf0;  // selects, not a run-time indexed array
    E* const h_next = done % 2 ? hbuf0 : hbuf1;
    E* const g_next = done % 2 ? g_h0 : g_h1;
    ++done;
    // 1. Rows that start here: h0 into the h buffer, c0 into registers; x_proj.
    if (n_cont < n_act) {
      const int64_t count = int64_t(n_act - n_cont) * q.Kh;
      ctx.each([&](Thread t) {
        for (int64_t e = t.tid; e < count; e += kThreads) {
          const int n = n_cont + int(e / q.Kh), col = int(e % q.Kh);
          const E v = col < P ? p.h0[(b0 + n) * P + col] : Num::from_float(0.f);
          ctx.st(t, h_cur + size_t(n) * ldh + col, v);
        }
      });
    }
    for_each_gate_tile(ctx, q.MT, [&](auto& wp, int i, int mt) {
      wp.each([&](Thread t) {
        const int u = r * U + mt * 4 + cell_unit(t.lane());
        FUSEDLSTM_UNROLL
        for (int nt = 0; nt < kMaxNTiles; ++nt) {
          const int n = nt * 8 + cell_col(t.lane());
          if (nt >= n_tiles || n >= n_act || u >= H) continue;
          const int64_t b = b0 + n;
          if (n >= n_cont) c[i][nt][t] = Num::to_float(p.c0[b * H + u]);
          const E* x = p.x_proj + (sp.offset + b) * G + u;
          FUSEDLSTM_UNROLL
          for (int gate = 0; gate < 4; ++gate) xp[i][nt][t].v[gate] = Num::to_float(x[gate * int64_t(H)]);
        }
      });
    });
    ctx.sync_cta(Barrier::kStepStart);

    // 2. Gate pre-activations, gate math, cell update.
    for_each_gate_tile(ctx, q.MT, [&](auto& wp, int i, int mt) {
      RegOf<Ctx, Acc> acc[kMaxNTiles];
      tile_product<Num>(ctx, wp, w, mt, kh_tiles, h_cur, ldh, n_tiles, acc);
      FUSEDLSTM_UNROLL
      for (int nt = 0; nt < kMaxNTiles; ++nt) {
        if (nt >= n_tiles) continue;
        // Lane (g, q) holds rows g and g + 8 of the tile, batch rows 2q
        // and 2q + 1: gates i and g of unit g (g < 4) or f and o of unit
        // g - 4. Partner lanes g and g ^ 4 (lane ^ 16) swap half: then
        // the lower lane has all four gates of its unit for batch row 2q,
        // the upper one for 2q + 1.
        RegOf<Ctx, float> send0, send1, got0, got1;
        wp.each([&](Thread t) {
          const bool lower = (t.lane() >> 2) < 4;
          const Acc& a = acc[nt][t];
          send0[t] = lower ? a.v[1] : a.v[0];  // selects: a run-time index would put acc in memory
          send1[t] = lower ? a.v[3] : a.v[2];
        });
        wp.shfl_xor(got0, send0, 16);
        wp.shfl_xor(got1, send1, 16);
        wp.each([&](Thread t) {
          const int lane = t.lane(), ul = mt * 4 + cell_unit(lane), n = nt * 8 + cell_col(lane);
          const int u = r * U + ul;
          const bool lower = (lane >> 2) < 4;
          const Acc& a = acc[nt][t];
          E h_out = Num::from_float(0.f);
          if (n < n_act && u < H) {
            const Acc& x = xp[i][nt][t];
            const Gates<float> act = activate_gates((lower ? a.v[0] : got0[t]) + x.v[0],
                                                    (lower ? got0[t] : a.v[1]) + x.v[1],
                                                    (lower ? a.v[2] : got1[t]) + x.v[2],
                                                    (lower ? got1[t] : a.v[3]) + x.v[3]);
            const float cn = cell_state(act, c[i][nt][t]);
            c[i][nt][t] = cn;
            h_out = Num::from_float(hidden_state(act, cn));
            const int64_t b = b0 + n, row = sp.offset + b;
            if (p.save) {
              E* out_act = p.acts + row * G + u;
              out_act[0] = Num::from_float(act.i);
              out_act[H] = Num::from_float(act.f);
              out_act[2 * int64_t(H)] = Num::from_float(act.g);
              out_act[3 * int64_t(H)] = Num::from_float(act.o);
              p.cells[row * H + u] = Num::from_float(cn);
            }
            if (q.proj) {
              if (p.save) p.h_raw[row * H + u] = h_out;
            } else {
              p.output[row * P + u] = h_out;
            }
            if (n >= n_end) {
              p.c_n[b * H + u] = Num::from_float(cn);
              if (!q.proj) p.h_n[b * P + u] = h_out;
            }
          }
          ctx.st(t, stage + size_t(n) * U + ul, h_out);  // zero for padding and idle rows
        });
      }
    });
    ctx.sync_cta(Barrier::kStaged);

    // 3. Exchange.
    if (!q.proj) {
      if (last) break;
      all_gather<kGrid>(ctx, gsync, Barrier::kStepEnd, stage, U, n_act, h_next, ldh, r * U, g_next, q.Kh);
      continue;
    }
    all_gather<kGrid>(ctx, gsync, Barrier::kHExchanged, stage, U, n_act, hfull, ldf, r * U, g_hfull, q.Kf);
    product_rows<Num>(ctx, wr, q.MTp, kf_tiles, hfull, ldf, n_tiles, [&](Thread t, int pl, int n, float out) {
      if (pl >= Up) return;
      const int col = r * Up + pl;
      const bool real = n < n_act && col < P;
      const E v = Num::from_float(real ? out : 0.f);
      ctx.st(t, stage2 + size_t(n) * Up + pl, v);
      if (!real) return;
      const int64_t b = b0 + n;
      p.output[(sp.offset + b) * P + col] = v;
      if (n >= n_end) p.h_n[b * P + col] = v;
    });
    if (last) break;
    ctx.sync_cta(Barrier::kProjStaged);
    all_gather<kGrid>(ctx, gsync, Barrier::kStepEnd, stage2, Up, n_act, h_next, ldh, r * Up, g_next, q.Kh);
  }
  // No CTA touches a peer's shared memory after its last cluster barrier,
  // so CTAs may exit without a final one.
}

}  // namespace fusedlstm::persistent
