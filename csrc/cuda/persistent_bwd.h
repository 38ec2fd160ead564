// The persistent LSTM backward: the work of one CTA for a whole layer and
// direction, written once over an execution context, with the
// forward's partition (persistent_layout.h): CTA r owns the same units (all
// four gates of each) and, for the recurrent gradient, the same output
// columns. Steps run in the opposite processing order. Per step k:
//   (a) dL/dh of this CTA's output columns: the reduced dh_prev of the step
//       processed before (rows that continue into it) or grad_h_n (rows that
//       end at step k in the forward), plus grad_output. With a projection it
//       is written out (grad_w_hr's input), gathered whole in every CTA (an
//       exchange) and multiplied by the CTA's W_hr^T slice into dL/dh of its
//       units. The same threads also gather h_prev (grad_w_hh's input).
//   (b) each thread runs the cell backward of its cells (dc stays in
//       registers across steps), writes grad_x_proj and grad_c0 (rows that
//       start at step k), and stages its gate gradients
//   (c) each warp multiplies W_hh^T slices (output columns x this CTA's gate
//       rows) by the staged gate gradients: this CTA's share of
//       dh_prev = d_gates . W_hh for every output column. The shares go to the
//       CTAs that own the columns (a reduce-scatter through distributed
//       shared memory: B_c * P values per CTA and step, against B_c * 4H for
//       broadcasting the gate gradients), one cluster barrier, then
//   (d) each CTA sums the S shares of its columns, in rank order: dh_prev of
//       its columns, kept for the next step or written as grad_h0 (rows that
//       start at step k).
// The shares are double-buffered by the parity of the processed-step count,
// so one cluster barrier per step (two with a projection) orders the
// exchange. In the grid tier (kGrid) the shares go straight from the
// product to the owners' slots in global memory and a grid barrier (the
// group's counter) stands for the cluster barrier. Weight gradients are not formed here: they are single GEMMs
// after the kernel (grad_w_hh = grad_x_proj^T . h_prev, grad_w_hr =
// dh_out^T . h_raw).
//
// Numbers: as in the forward. The gate gradients are rounded to the 16-bit
// type once (they are grad_x_proj and the product's input); dh_prev and dc
// stay in float.
#pragma once

#include "persistent_step.h"

namespace fusedlstm::persistent {

// Arguments of the backward kernel (the op contract's lstm_layer_bwd).
template <typename Num>
struct BwdParams {
  using E = typename Num::storage;
  Partition part;
  PlanView plan;
  int first_group = 0;      // batch group of the launch's first cluster (grid tier: one launch per few groups)
  GridBuffers<E> grid;      // grid tier only
  const E* grad_output = nullptr;  // [rows, P] or null (zero)
  const E* grad_h_n = nullptr;     // [B, P] or null
  const E* grad_c_n = nullptr;     // [B, H] or null
  const E* w_hh = nullptr;         // [4H, P]
  const E* w_hr = nullptr;         // [P, H] (projection) or null
  const E* h0 = nullptr;           // [B, P]
  const E* c0 = nullptr;           // [B, H]
  const E* output = nullptr;       // [rows, P]
  const E* acts = nullptr;         // [rows, 4H]
  const E* cells = nullptr;        // [rows, H]
  E* grad_x = nullptr;             // [rows, 4H]
  E* grad_h0 = nullptr;            // [B, P]
  E* grad_c0 = nullptr;            // [B, H]
  E* h_prev = nullptr;             // [rows, P]: each step's recurrent input, for grad_w_hh
  E* dh_out = nullptr;             // [rows, P]: dL/d(output), for grad_w_hr (projection) or null
};

template <typename Num, bool kGrid, typename Ctx>
FUSEDLSTM_STEP void backward_cta(Ctx& ctx, const BwdParams<Num>& p) {
  using E = typename Num::storage;
  const Partition& q = p.part;
  const int H = q.H, P = q.P, U = q.U, Up = q.Up, NB = q.NB, S = q.S, r = ctx.cta_rank();
  const int group = p.first_group + ctx.cluster_id();
  const int64_t G = 4 * int64_t(H), b0 = int64_t(group) * NB;
  const int ldh = q.ldh(), ldg = q.ldg(), kh_tiles = q.Kh / 16;
  const size_t share = size_t(NB) * Up;  // floats of one CTA's share for one owner
  const BwdSmem L = bwd_smem<Num>(q, kGrid);
  unsigned char* smem = ctx.smem();
  E* const wt = reinterpret_cast<E*>(smem + L.wt);
  E* const wrt = reinterpret_cast<E*>(smem + L.wrt);
  E* const dg = reinterpret_cast<E*>(smem + L.dg);
  float* const partial = reinterpret_cast<float*>(smem + L.partial);
  float* const recv0 = reinterpret_cast<float*>(smem + L.recv[0]);
  float* const recv1 = reinterpret_cast<float*>(smem + L.recv[1]);
  float* const dh_next = reinterpret_cast<float*>(smem + L.dh_next);
  float* const dh_cell = reinterpret_cast<float*>(smem + L.dh_cell);
  E* const dh_out_all = reinterpret_cast<E*>(smem + L.dh_out);
  E* const dh_stage = reinterpret_cast<E*>(smem + L.dh_stage);

  // W_hh^T restricted to this CTA's gate rows: A[col][4*16*mt + 4*gate + j]
  // = W_hh[gate*H + unit][col], unit = r*U + 4*mt + j (the forward's order).
  load_a_operand<Num>(ctx, wt, q.Kh, q.MT, [&](int col, int k) {
    const int gate = (k % 16) / 4, u = r * U + (k / 16) * 4 + k % 4;
    return u < H && col < P ? p.w_hh[(gate * int64_t(H) + u) * P + col] : Num::from_float(0.f);
  });
  if (q.proj) {  // W_hr^T rows of this CTA's units
    load_a_operand<Num>(ctx, wrt, 16 * q.MTu, kh_tiles, [&](int ul, int col) {
      const int u = r * U + ul;
      return ul < U && u < H && col < P ? p.w_hr[int64_t(col) * H + u] : Num::from_float(0.f);
    });
  }
  zero_smem(ctx, L.dg, L.total);
  RegOf<Ctx, float> dc[kMaxMTilesPerWarp][kMaxNTiles];  // dL/dc of this thread's cells
  ctx.each([&](Thread t) {
    FUSEDLSTM_UNROLL
    for (int i = 0; i < kMaxMTilesPerWarp; ++i) {
      FUSEDLSTM_UNROLL
      for (int nt = 0; nt < kMaxNTiles; ++nt) dc[i][nt][t] = 0.f;
    }
  });
  // Grid tier: this group's exchange buffers ([owner][from] shares) and barrier count.
  const size_t group_shares = size_t(S) * S * share;
  float* const g_shares0 = kGrid ? p.grid.shares0 + group * group_shares : nullptr;
  float* const g_shares1 = kGrid ? p.grid.shares1 + group * group_shares : nullptr;
  E* const g_dh_out = kGrid && q.proj ? p.grid.dh_out + size_t(group) * NB * q.Kh : nullptr;
  GridSync gsync{kGrid ? p.grid.counters + group : nullptr, S};
  if constexpr (kGrid) {
    ctx.sync_cta(Barrier::kStart);  // no CTA writes into another's shared memory
  } else {
    ctx.sync_cluster(Barrier::kStart);
  }

  int64_t done = 0;  // steps processed so far: the parity of the shares
  for (int64_t k = p.plan.T - 1; k >= 0; --k) {
    const StepPlan sp = p.plan.at(k);
    const int n_act = clamp_rows(sp.rows, b0, NB);
    if (n_act == 0) continue;  // the same for every CTA of the cluster
    const int n_cont = clamp_rows(sp.continuing, b0, NB);
    // Rows n < n_next went on into step k + 1: their dh and dc come from it.
    const int n_next = clamp_rows(p.plan.continuing_after(k), b0, NB);
    const int n_tiles = ceil_div(n_act, 8);
    float* const shares = done % 2 ? recv1 : recv0;
    float* const g_shares = done % 2 ? g_shares1 : g_shares0;
    ++done;

    // (a) dL/dh of this CTA's columns; h_prev.
    const int cols = n_act * Up;
    ctx.each([&](Thread t) {
      for (int e = t.tid; e < cols; e += kThreads) {
        const int n = e / Up, pl = e % Up, col = r * Up + pl;
        const int64_t b = b0 + n, row = sp.offset + b;
        float dh = 0.f;
        if (col < P) {
          dh = n < n_next ? ctx.ld(t, dh_next + e) : p.grad_h_n ? Num::to_float(p.grad_h_n[b * P + col]) : 0.f;
          if (p.grad_output) dh += Num::to_float(p.grad_output[row * P + col]);
          p.h_prev[row * P + col] = n < n_cont ? p.output[(sp.prev_offset + b) * P + col] : p.h0[b * P + col];
        }
        if (q.proj) {
          const E v = Num::from_float(dh);
          if (col < P) p.dh_out[row * P + col] = v;
          ctx.st(t, dh_stage + e, v);
        } else {
          ctx.st(t, dh_cell + e, dh);
        }
      }
    });
    if (q.proj) {  // dL/dh of the units = dL/d(output) . W_hr
      ctx.sync_cta(Barrier::kDhOutStaged);
      all_gather<kGrid>(ctx, gsync, Barrier::kDhOutExchanged, dh_stage, Up, n_act, dh_out_all, ldh, r * Up, g_dh_out,
                        q.Kh);
      product_rows<Num>(ctx, wrt, q.MTu, kh_tiles, dh_out_all, ldh, n_tiles, [&](Thread t, int ul, int n, float dh) {
        if (ul < U && n < n_act) ctx.st(t, dh_cell + size_t(n) * U + ul, dh);
      });
    }
    ctx.sync_cta(Barrier::kDh);

    // (b) Cell backward.
    for_each_gate_tile(ctx, q.MT, [&](auto& wp, int i, int mt) {
      wp.each([&](Thread t) {
        const int j = cell_unit(t.lane()), ul = mt * 4 + j, u = r * U + ul;
        FUSEDLSTM_UNROLL
        for (int nt = 0; nt < kMaxNTiles; ++nt) {
          const int n = nt * 8 + cell_col(t.lane());
          if (nt >= n_tiles) continue;
          E* const staged = dg + size_t(n) * ldg + mt * 16 + j;
          if (n >= n_act || u >= H) {
            FUSEDLSTM_UNROLL
            for (int gate = 0; gate < 4; ++gate) ctx.st(t, staged + 4 * gate, Num::from_float(0.f));
            continue;
          }
          const int64_t b = b0 + n, row = sp.offset + b;
          const E* a = p.acts + row * G + u;
          const Gates<float> act{Num::to_float(a[0]), Num::to_float(a[H]), Num::to_float(a[2 * int64_t(H)]),
                                 Num::to_float(a[3 * int64_t(H)])};
          const float c_prev = Num::to_float(n < n_cont ? p.cells[(sp.prev_offset + b) * H + u] : p.c0[b * H + u]);
          const float dc_in = n < n_next ? dc[i][nt][t] : p.grad_c_n ? Num::to_float(p.grad_c_n[b * H + u]) : 0.f;
          float dc_prev;
          const Gates<float> d = gates_backward(act, c_prev, Num::to_float(p.cells[row * H + u]),
                                                ctx.ld(t, dh_cell + size_t(n) * U + ul), dc_in, dc_prev);
          const E dq[4] = {Num::from_float(d.i), Num::from_float(d.f), Num::from_float(d.g), Num::from_float(d.o)};
          E* gx = p.grad_x + row * G + u;
          FUSEDLSTM_UNROLL
          for (int gate = 0; gate < 4; ++gate) {
            gx[gate * int64_t(H)] = dq[gate];
            ctx.st(t, staged + 4 * gate, dq[gate]);
          }
          dc[i][nt][t] = dc_prev;
          if (n >= n_cont) p.grad_c0[b * H + u] = Num::from_float(dc_prev);
        }
      });
    });
    ctx.sync_cta(Barrier::kGates);

    // (c) This CTA's share of dh_prev for every output column, staged per owner.
    // Cluster tier: staged per owner, then pushed into slot r of each owner.
    // Grid tier: straight into slot [owner][r] of the global shares.
    product_rows<Num>(ctx, wt, kh_tiles, q.MT, dg, ldg, n_tiles, [&](Thread t, int col, int n, float share_of_dh) {
      if (col >= S * Up || n >= n_act) return;
      const size_t at = size_t(n) * Up + col % Up;
      if constexpr (kGrid) {
        g_shares[(size_t(col / Up) * S + r) * share + at] = share_of_dh;
      } else {
        ctx.st(t, partial + (col / Up) * share + at, share_of_dh);
      }
    });
    if constexpr (kGrid) {
      gsync.wait(ctx, Barrier::kStepEnd);
    } else {
      ctx.sync_cta(Barrier::kStaged);
      push_rows(ctx, partial, share, Up, n_act, shares + r * share, Up, 0);
      ctx.sync_cluster(Barrier::kStepEnd);
    }

    // (d) Sum the shares of this CTA's columns: dh_prev.
    ctx.each([&](Thread t) {
      for (int e = t.tid; e < cols; e += kThreads) {
        const int n = e / Up, pl = e % Up, col = r * Up + pl;
        float v = 0.f;
        for (int s = 0; s < S; ++s) {
          if constexpr (kGrid) {
            v += ctx.ld_global(t, g_shares + (size_t(r) * S + s) * share + e);
          } else {
            v += ctx.ld(t, shares + s * share + e);
          }
        }
        if (n >= n_cont) {
          if (col < P) p.grad_h0[(b0 + n) * P + col] = Num::from_float(v);
        } else {
          ctx.st(t, dh_next + e, v);  // read by this same thread at (a) of the next step
        }
      }
    });
  }
}

}  // namespace fusedlstm::persistent
