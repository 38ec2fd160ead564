// One whole LSTM cell step for inference in one kernel launch: both
// matrix-vector products, the biases and the cell update.
//   x [B, I], h [B, H], c [B, H], w_ih [4H, I], w_hh [4H, H], b_ih, b_hh [4H] or null
//   -> h_next [B, H], c_next [B, H]
// For generation at small batch, where the differentiable step (two cuBLAS
// GEMMs, a bias add and the cell kernel: four launches) is launch-bound: a
// 2-layer step at H=256, B=1 took 0.17 ms against cuDNN's 0.092 ms (H200,
// float32, benchmarks/RESULTS.md). Inference only: it keeps no activations.
//
// Work split: warp w of the grid owns hidden unit j = w, i.e. the four gate
// rows g*H + j of W_ih and of W_hh. Its 32 lanes split those rows' columns:
// lane l reads columns l*VEC .. l*VEC + VEC - 1, then 32*VEC further, and so
// on (x's part, then h's), so that a warp reads each weight row contiguously,
// in 128-bit loads when VEC > 1 (as pointwise_cuda.cuh). Each lane keeps the
// four gates' partial dot products of up to ROWS batch rows (in float for
// half types: at::opmath_type), so that each weight is read once per ROWS
// rows; a butterfly of shuffles sums them over the warp; lane r then finishes
// row r: biases, gate math (gate_math.h), c_next and h_next. Batches above
// ROWS take further passes over the weights (from L2).
//
// The per-thread pieces (step_partial, step_finish) are __host__ __device__,
// and run_cell_step is a template over the launcher, so that
// tests/cpp/test_cell_step_on_host.cu runs this code lane by lane on the
// CPU, against the CPU backend. Block size and ROWS are not tuned on a GPU.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "checks_cuda.h"
#include "fusedlstm/checks.h"
#include "pointwise_cuda.cuh"

namespace fusedlstm::cuda {

constexpr int kWarpLanes = 32;
constexpr int kStepWarpsPerBlock = 4;
// Rows per pass over the weights: the accumulators of 8 rows (32 per lane)
// stay in registers. fusedlstm.backends.STEP_MAX_BATCH, the largest batch
// FusedLSTMCell runs this for, is this: one pass over the weights.
constexpr int kStepMaxRows = 8;

template <typename scalar_t>
struct CellStepArgs {
  int64_t B;
  int I, H;
  const scalar_t* x;     // [B, I]
  const scalar_t* h;     // [B, H]
  const scalar_t* c;     // [B, H]
  const scalar_t* w_ih;  // [4H, I]
  const scalar_t* w_hh;  // [4H, H]
  const scalar_t* b_ih;  // [4H] or null
  const scalar_t* b_hh;  // [4H] or null
  scalar_t* h_next;      // [B, H]
  scalar_t* c_next;      // [B, H]
};

// acc[g][r] += this lane's share of sum_k w[g * gate_stride + k] * v[r * K + k]:
// w points at gate 0's weight row (length K), gate g's lies g * gate_stride
// further; rows r < rows of v [., K]. The lane takes columns lane * VEC + m
// * lanes * VEC (all VEC of them: K % VEC == 0).
template <int VEC, int ROWS, typename scalar_t, typename math_t>
FUSEDLSTM_HOST_DEVICE void dot_columns(const scalar_t* w, int64_t gate_stride, const scalar_t* v,
                                       int K, int rows, int lane, int lanes,
                                       math_t (&acc)[4][ROWS]) {
  for (int k = lane * VEC; k < K; k += lanes * VEC) {
    Pack<scalar_t, VEC> wk[4];
#pragma unroll
    for (int g = 0; g < 4; ++g) wk[g] = load_pack<VEC>(w + g * gate_stride + k);
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      if (r < rows) {
        const Pack<scalar_t, VEC> vk = load_pack<VEC>(v + static_cast<int64_t>(r) * K + k);
#pragma unroll
        for (int g = 0; g < 4; ++g) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            acc[g][r] += static_cast<math_t>(wk[g].v[e]) * static_cast<math_t>(vk.v[e]);
          }
        }
      }
    }
  }
}

// One lane's share of the gate pre-activations (without biases) of hidden
// unit j, rows b0 .. b0 + ROWS - 1 (those < B): acc[gate][row - b0].
template <int VEC, int ROWS, typename scalar_t, typename math_t>
FUSEDLSTM_HOST_DEVICE void step_partial(const CellStepArgs<scalar_t>& a, int j, int64_t b0, int lane,
                                        int lanes, math_t (&acc)[4][ROWS]) {
#pragma unroll
  for (int g = 0; g < 4; ++g) {
#pragma unroll
    for (int r = 0; r < ROWS; ++r) acc[g][r] = math_t(0);
  }
  const int rows = a.B - b0 < ROWS ? static_cast<int>(a.B - b0) : ROWS;
  const int64_t H = a.H, I = a.I;
  dot_columns<VEC, ROWS>(a.w_ih + j * I, H * I, a.x + b0 * I, a.I, rows, lane, lanes, acc);
  dot_columns<VEC, ROWS>(a.w_hh + j * H, H * H, a.h + b0 * H, a.H, rows, lane, lanes, acc);
}

// Row b of hidden unit j from its summed pre-activations: adds the biases,
// applies the gate math, writes c_next and h_next (h from c before rounding,
// as lstm_fwd_units does).
template <typename scalar_t, typename math_t>
FUSEDLSTM_HOST_DEVICE void step_finish(const CellStepArgs<scalar_t>& a, int j, int64_t b,
                                       math_t pi, math_t pf, math_t pg, math_t po) {
  math_t z[4] = {pi, pf, pg, po};
#pragma unroll
  for (int g = 0; g < 4; ++g) {
    if (a.b_ih) z[g] += static_cast<math_t>(a.b_ih[g * a.H + j]);
    if (a.b_hh) z[g] += static_cast<math_t>(a.b_hh[g * a.H + j]);
  }
  const Gates<math_t> gates = activate_gates(z[0], z[1], z[2], z[3]);
  const int64_t u = b * a.H + j;
  const math_t cj = cell_state(gates, static_cast<math_t>(a.c[u]));
  a.c_next[u] = static_cast<scalar_t>(cj);
  a.h_next[u] = static_cast<scalar_t>(hidden_state(gates, cj));
}

template <int VEC, int ROWS, typename scalar_t>
__global__ void __launch_bounds__(kWarpLanes * kStepWarpsPerBlock)
    _lstm_cell_step_kernel(CellStepArgs<scalar_t> a) {
  using math_t = at::opmath_type<scalar_t>;
  const int lane = static_cast<int>(threadIdx.x) % kWarpLanes;
  const int j = static_cast<int>(blockIdx.x) * kStepWarpsPerBlock + static_cast<int>(threadIdx.x) / kWarpLanes;
  if (j >= a.H) return;  // the whole warp: its lanes share j
  for (int64_t b0 = 0; b0 < a.B; b0 += ROWS) {
    math_t acc[4][ROWS];
    step_partial<VEC, ROWS>(a, j, b0, lane, kWarpLanes, acc);
#pragma unroll
    for (int g = 0; g < 4; ++g) {
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
#pragma unroll
        for (int offset = kWarpLanes / 2; offset > 0; offset /= 2) {
          acc[g][r] += __shfl_xor_sync(0xffffffffu, acc[g][r], offset);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      if (lane == r && b0 + r < a.B) step_finish(a, j, b0 + r, acc[0][r], acc[1][r], acc[2][r], acc[3][r]);
    }
  }
}

// Launches the step kernel on `stream`: one warp per hidden unit.
struct StepKernelLauncher {
  cudaStream_t stream;

  template <int VEC, int ROWS, typename scalar_t>
  void run(void (*kernel)(CellStepArgs<scalar_t>), const CellStepArgs<scalar_t>& a) const {
    const dim3 grid(static_cast<unsigned>((a.H + kStepWarpsPerBlock - 1) / kStepWarpsPerBlock));
    const dim3 block(kWarpLanes * kStepWarpsPerBlock);
    kernel<<<grid, block, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

// lstm_cell_step on checked arguments of shape `s`; `launcher` runs the
// kernel (StepKernelLauncher: on the GPU).
template <typename Launcher>
std::tuple<at::Tensor, at::Tensor> run_cell_step(const Launcher& launcher, const StepShape& s,
                                                 const at::Tensor& x, const at::Tensor& h,
                                                 const at::Tensor& c, const at::Tensor& w_ih,
                                                 const at::Tensor& w_hh,
                                                 const std::optional<at::Tensor>& b_ih,
                                                 const std::optional<at::Tensor>& b_hh) {
  const at::Tensor xc = x.contiguous(), hc = h.contiguous(), cc = c.contiguous();
  const at::Tensor wi = w_ih.contiguous(), wh = w_hh.contiguous();
  const at::Tensor bi = b_ih.has_value() ? b_ih->contiguous() : at::Tensor();
  const at::Tensor bh = b_hh.has_value() ? b_hh->contiguous() : at::Tensor();
  at::Tensor h_next = at::empty({s.B, s.H}, x.options());
  at::Tensor c_next = at::empty({s.B, s.H}, x.options());
  if (s.B == 0) return {h_next, c_next};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "lstm_cell_step_cuda", [&] {
    const CellStepArgs<scalar_t> a{s.B,
                                   static_cast<int>(s.I),
                                   static_cast<int>(s.H),
                                   kernel_input<scalar_t>(xc, "x"),
                                   kernel_input<scalar_t>(hc, "h"),
                                   kernel_input<scalar_t>(cc, "c"),
                                   kernel_input<scalar_t>(wi, "w_ih"),
                                   kernel_input<scalar_t>(wh, "w_hh"),
                                   bi.defined() ? kernel_input<scalar_t>(bi, "b_ih") : nullptr,
                                   bh.defined() ? kernel_input<scalar_t>(bh, "b_hh") : nullptr,
                                   kernel_output<scalar_t>(h_next, "h_next"),
                                   kernel_output<scalar_t>(c_next, "c_next")};
    // Rows of x, h and the weights start at multiples of I or H elements.
    constexpr int V = kVecWidth<scalar_t>;
    const bool vec = s.I % V == 0 && s.H % V == 0 &&
                     all_aligned(V * sizeof(scalar_t), a.x, a.h, a.w_ih, a.w_hh);
    if (s.B == 1) {
      if (vec) {
        launcher.template run<V, 1>(_lstm_cell_step_kernel<V, 1, scalar_t>, a);
      } else {
        launcher.template run<1, 1>(_lstm_cell_step_kernel<1, 1, scalar_t>, a);
      }
    } else if (vec) {
      launcher.template run<V, kStepMaxRows>(_lstm_cell_step_kernel<V, kStepMaxRows, scalar_t>, a);
    } else {
      launcher.template run<1, kStepMaxRows>(_lstm_cell_step_kernel<1, kStepMaxRows, scalar_t>, a);
    }
  });
  return {h_next, c_next};
}

}  // namespace fusedlstm::cuda
