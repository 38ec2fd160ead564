// Per-unit LSTM pointwise work on the GPU (the gate math of
// include/fusedlstm/gate_math.h, evaluated by CUDA threads), shared by the
// cell and the layer kernels; the CUDA counterpart of cpu/pointwise_cpu.h.
//
// Work split: one thread computes VEC consecutive hidden units j..j+VEC-1 of
// a row (all four gates of each), so that every access of a gate row, of c
// and of h is one 128-bit load or store when VEC = 16 / sizeof(scalar_t) (4
// floats, 2 doubles, 8 halves or bfloat16s). VEC = 1 is the fallback when H
// is not a multiple of that width or a pointer is not 16-byte aligned.
// Half and bfloat16 data is computed in float (at::opmath_type), as cuDNN
// does for those types. The per-unit functions are __host__ __device__ so
// that a CPU test can run them (tests/cpp/test_cuda_on_host.cu).
//
// Grid: x runs over the H / VEC unit groups of a row, y over the rows (with
// a grid-stride loop, since gridDim.y is capped at 65535). Row offsets are
// int64_t; offsets inside a row are int, which needs 4H <= INT32_MAX
// (checked on the host, checks_cuda.h).
#pragma once

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "fusedlstm/gate_math.h"

namespace fusedlstm::cuda {

// Elements of scalar_t in one 128-bit access.
template <typename scalar_t>
constexpr int kVecWidth = 16 / static_cast<int>(sizeof(scalar_t));

// N consecutive elements, loaded and stored as one aligned access.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Read and written through a cast pointer, the idiom of ATen's vectorised
// loads, which nvcc turns into one 128-bit access (a memcpy becomes byte
// accesses there).
template <int N, typename T>
FUSEDLSTM_HOST_DEVICE Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <int N, typename T>
FUSEDLSTM_HOST_DEVICE void store_pack(T* p, const Pack<T, N>& x) {
  *reinterpret_cast<Pack<T, N>*>(p) = x;
}

// Forward of VEC hidden units of one row. Pointers point at the first unit:
// gate k of a unit lies k * H further in the [4H] rows.
//   pre_a [4H] (+ pre_b [4H] when not null): gate pre-activations
//   act [4H]: post-activation gates (may alias pre_b: all loads come first)
//   c_prev [H] (state_t) -> c [H] (state_t, may alias c_prev) and h [H];
//   c_copy / h_copy, when not null, receive c and h again in scalar_t.
template <int VEC, typename scalar_t, typename state_t>
FUSEDLSTM_HOST_DEVICE void lstm_fwd_units(int H, const scalar_t* pre_a, const scalar_t* pre_b,
                                          scalar_t* act, const state_t* c_prev, state_t* c,
                                          scalar_t* c_copy, scalar_t* h, scalar_t* h_copy) {
  using math_t = at::opmath_type<scalar_t>;
  Pack<scalar_t, VEC> pre[4], rec[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    pre[k] = load_pack<VEC>(pre_a + k * H);
    if (pre_b) rec[k] = load_pack<VEC>(pre_b + k * H);
  }
  const Pack<state_t, VEC> cp = load_pack<VEC>(c_prev);
  Pack<scalar_t, VEC> out_act[4], out_c, out_h;
  Pack<state_t, VEC> out_state;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    math_t z[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      z[k] = static_cast<math_t>(pre[k].v[e]);
      if (pre_b) z[k] += static_cast<math_t>(rec[k].v[e]);
    }
    const Gates<math_t> a = activate_gates(z[0], z[1], z[2], z[3]);
    const math_t cj = cell_state(a, static_cast<math_t>(cp.v[e]));
    const math_t hj = hidden_state(a, cj);
    out_act[0].v[e] = static_cast<scalar_t>(a.i);
    out_act[1].v[e] = static_cast<scalar_t>(a.f);
    out_act[2].v[e] = static_cast<scalar_t>(a.g);
    out_act[3].v[e] = static_cast<scalar_t>(a.o);
    out_state.v[e] = static_cast<state_t>(cj);
    out_c.v[e] = static_cast<scalar_t>(cj);
    out_h.v[e] = static_cast<scalar_t>(hj);
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) store_pack<VEC>(act + k * H, out_act[k]);
  store_pack<VEC>(c, out_state);
  if (c_copy) store_pack<VEC>(c_copy, out_c);
  store_pack<VEC>(h, out_h);
  if (h_copy) store_pack<VEC>(h_copy, out_h);
}

// Backward of VEC hidden units of one row, pointers at the first unit.
//   dh_a [H] (+ dh_b [H] when not null): gradient reaching h
//   dc [H] (state_t): gradient reaching c; act [4H], c_prev [H], c [H]
//   -> d_gates [4H] (pre-activation gradients), dc_prev [H] (state_t, may
//   alias dc).
template <int VEC, typename scalar_t, typename state_t>
FUSEDLSTM_HOST_DEVICE void lstm_bwd_units(int H, const scalar_t* dh_a, const scalar_t* dh_b,
                                          const state_t* dc, const scalar_t* act,
                                          const scalar_t* c_prev, const scalar_t* c,
                                          scalar_t* d_gates, state_t* dc_prev) {
  using math_t = at::opmath_type<scalar_t>;
  Pack<scalar_t, VEC> a_in[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) a_in[k] = load_pack<VEC>(act + k * H);
  const Pack<scalar_t, VEC> dh_in = load_pack<VEC>(dh_a);
  Pack<scalar_t, VEC> dh_more;
  if (dh_b) dh_more = load_pack<VEC>(dh_b);
  const Pack<state_t, VEC> dc_in = load_pack<VEC>(dc);
  const Pack<scalar_t, VEC> cp = load_pack<VEC>(c_prev);
  const Pack<scalar_t, VEC> cc = load_pack<VEC>(c);
  Pack<scalar_t, VEC> out_d[4];
  Pack<state_t, VEC> out_dc;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    const Gates<math_t> a{static_cast<math_t>(a_in[0].v[e]), static_cast<math_t>(a_in[1].v[e]),
                          static_cast<math_t>(a_in[2].v[e]), static_cast<math_t>(a_in[3].v[e])};
    math_t dh = static_cast<math_t>(dh_in.v[e]);
    if (dh_b) dh += static_cast<math_t>(dh_more.v[e]);
    const math_t cj = static_cast<math_t>(cc.v[e]);
    math_t dcp;
    const Gates<math_t> d = gates_backward(a, static_cast<math_t>(cp.v[e]), cj, dh,
                                           static_cast<math_t>(dc_in.v[e]), dcp);
    out_d[0].v[e] = static_cast<scalar_t>(d.i);
    out_d[1].v[e] = static_cast<scalar_t>(d.f);
    out_d[2].v[e] = static_cast<scalar_t>(d.g);
    out_d[3].v[e] = static_cast<scalar_t>(d.o);
    out_dc.v[e] = static_cast<state_t>(dcp);
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) store_pack<VEC>(d_gates + k * H, out_d[k]);
  store_pack<VEC>(dc_prev, out_dc);
}

// --- running a step's pointwise pass ---------------------------------------------------------
//
// A "step" is a struct of a pass's arguments with `n` (rows), `H` (hidden
// units per row) and `template <int VEC> units(b, j)`, the work of one thread:
// units j..j+VEC-1 of row b. Kernels run it over their grid (for_each_unit);
// host loops hand it to a `Rows` object: KernelRows below launches a kernel,
// the CPU test of csrc/cuda runs units() for every (b, j) in turn.

// Index of this thread's unit group in its row (the units are
// group * VEC .. group * VEC + VEC - 1), and its rows: first_row(),
// first_row() + row_stride(), ...
__device__ __forceinline__ int unit_group() {
  return static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
}
__device__ __forceinline__ int64_t first_row() {
  return static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y;
}
__device__ __forceinline__ int64_t row_stride() {
  return static_cast<int64_t>(gridDim.y) * blockDim.y;
}

// The body of every pointwise kernel: this thread's unit group, all its rows.
template <int VEC, typename Step>
__device__ __forceinline__ void for_each_unit(const Step& step) {
  const int group = unit_group();
  if (group >= step.H / VEC) return;
  for (int64_t b = first_row(); b < step.n; b += row_stride()) {
    step.template units<VEC>(b, group * VEC);
  }
}

// Launches kernel(step) over step.n rows of `groups` unit groups each, on
// `stream`, and checks the launch. Blocks of 128 threads: x covers up to 128
// unit groups of a row (a multiple of a warp), y packs several rows into a
// block when a row has fewer groups, so small H still fills warps. The size
// is not tuned on a GPU yet.
template <typename Step>
void launch_rows(void (*kernel)(Step), const Step& step, int64_t groups, cudaStream_t stream) {
  const int64_t rows = step.n;
  if (rows == 0 || groups == 0) return;
  constexpr int64_t kThreads = 128, kMaxGridY = 65535;
  const int64_t tx = std::min<int64_t>((groups + 31) / 32 * 32, kThreads);
  const int64_t ty = std::max<int64_t>(1, kThreads / tx);
  const dim3 block(static_cast<unsigned>(tx), static_cast<unsigned>(ty));
  const dim3 grid(static_cast<unsigned>((groups + tx - 1) / tx),
                  static_cast<unsigned>(std::min<int64_t>((rows + ty - 1) / ty, kMaxGridY)));
  kernel<<<grid, block, 0, stream>>>(step);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Runs each step's pass as a kernel launch on `stream`.
struct KernelRows {
  cudaStream_t stream;

  template <int VEC, typename Step>
  void run(void (*kernel)(Step), const Step& step) const {
    launch_rows(kernel, step, step.H / VEC, stream);
  }
};

// True when every pointer is aligned for a Pack of `bytes` bytes (null
// pointers, for absent optional outputs, count as aligned).
template <typename... Ptrs>
bool all_aligned(size_t bytes, const Ptrs*... ptrs) {
  return ((reinterpret_cast<uintptr_t>(ptrs) % bytes == 0) && ...);
}

}  // namespace fusedlstm::cuda
