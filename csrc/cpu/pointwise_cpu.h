// Vectorised per-row LSTM pointwise kernels (the gate math of
// include/fusedlstm/gate_math.h on at::vec vectors), used by the cell and the
// layer ops. Half and bfloat16 rows are computed in float.
//
// The vector width is that of the SIMD level this copy is compiled for
// (CPU_CAPABILITY: 16 floats with AVX-512, 8 with AVX2; lstm_cpu.h).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "fusedlstm/gate_math.h"

namespace fusedlstm {

namespace cpu {
inline namespace CPU_CAPABILITY {  // one copy per SIMD level (lstm_cpu.h)

// exp of float vectors, inlined: SLEEF's is a function call, around which the
// fused epilogues must save every live vector register. Cody-Waite reduction
// by ln 2 and Cephes' degree-6 polynomial for exp(r): at most 1.26 ulp on
// [-87.4, 87.9] (checked against double exp), NaN stays NaN, and the input
// is clamped to [-87.5, 88] so the result stays finite: sigmoid and tanh
// saturate exactly as with the true exp.
inline at::vec::Vectorized<float> exp_inline(const at::vec::Vectorized<float>& x) {
  using V = at::vec::Vectorized<float>;
  using VI = at::vec::Vectorized<int32_t>;
  const V xc = at::vec::minimum(at::vec::maximum(x, V(-87.5f)), V(88.0f));
  const V n = at::vec::fmadd(xc, V(1.44269504088896341f), V(0.5f)).floor();  // round(x / ln 2)
  const V r = (xc - n * V(0.693359375f)) - n * V(-2.12194440e-4f);          // x - n ln 2
  V p = at::vec::fmadd(V(1.9875691500e-4f), r, V(1.3981999507e-3f));
  p = at::vec::fmadd(p, r, V(8.3334519073e-3f));
  p = at::vec::fmadd(p, r, V(4.1665795894e-2f));
  p = at::vec::fmadd(p, r, V(1.6666665459e-1f));
  p = at::vec::fmadd(p, r, V(5.0000001201e-1f));
  p = at::vec::fmadd(p, r * r, r + V(1.0f));
  const VI two_to_n = (at::vec::convert_to_int_of_same_size(n) + VI(127)) << VI(23);
  return p * at::vec::cast<float>(two_to_n);
}

inline at::vec::Vectorized<double> exp_inline(const at::vec::Vectorized<double>& x) {
  return x.exp();  // float64 runs in tests, not in hot loops: SLEEF's 1-ulp exp
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu

// Activations on SIMD vectors. tanh(x) = 2 sigmoid(2x) - 1: on the AVX-512
// development machine SLEEF's tanh took 88 cycles per 16 floats against 25
// for this (tests/cpp bench, 2026-11-28), and the gate math has two tanh per
// unit. Its error is absolute, about one unit of 1.0 (6e-8 in float), where
// every tanh in the LSTM is added to or multiplies O(1) quantities.
template <typename S>
struct Activation<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  static V sigmoid(V x) { return (V(S(1)) + cpu::exp_inline(x.neg())).reciprocal(); }
  static V tanh(V x) { return V(S(2)) * sigmoid(x + x) - V(S(1)); }
};

namespace cpu {
inline namespace CPU_CAPABILITY {  // one copy per SIMD level (lstm_cpu.h)

// Loads and stores of scalar_t memory as vectors of its math type; the
// `count` forms touch only the first `count` lanes (the rest load as 0).
template <typename scalar_t>
struct VecIO {
  using math_t = scalar_t;
  using Vec = at::vec::Vectorized<scalar_t>;
  static Vec load(const scalar_t* p) { return Vec::loadu(p); }
  static Vec load(const scalar_t* p, int64_t count) { return Vec::loadu(p, count); }
  static void store(scalar_t* p, const Vec& v) { v.store(p); }
  static void store(scalar_t* p, const Vec& v, int64_t count) { v.store(p, count); }
};

template <typename reduced_t>
struct ReducedVecIO {
  using math_t = float;
  using Vec = at::vec::Vectorized<float>;
  static Vec load(const reduced_t* p) {
    Vec v;
    at::vec::load_to_float<reduced_t>(p, v);
    return v;
  }
  static Vec load(const reduced_t* p, int64_t count) {
    return std::get<0>(at::vec::convert_to_float<reduced_t>(
        at::vec::Vectorized<reduced_t>::loadu(p, count)));
  }
  static void store(reduced_t* p, const Vec& v) { store(p, v, Vec::size()); }
  static void store(reduced_t* p, const Vec& v, int64_t count) {
    at::vec::convert_from_float<reduced_t>(v, v).store(p, count);
  }
};

template <>
struct VecIO<at::BFloat16> : ReducedVecIO<at::BFloat16> {};
template <>
struct VecIO<at::Half> : ReducedVecIO<at::Half> {};

// The four gates of `count` units starting at p, gate-major rows [4H]: i at
// p, f at p + H, g at p + 2H, o at p + 3H.
template <typename scalar_t, typename Vec = typename VecIO<scalar_t>::Vec>
inline Gates<Vec> load_gates(const scalar_t* p, int64_t H, int64_t count) {
  using IO = VecIO<scalar_t>;
  return {IO::load(p, count), IO::load(p + H, count), IO::load(p + 2 * H, count),
          IO::load(p + 3 * H, count)};
}

template <typename scalar_t, typename Vec>
inline void store_gates(scalar_t* p, int64_t H, const Gates<Vec>& a, int64_t count) {
  using IO = VecIO<scalar_t>;
  IO::store(p, a.i, count);
  IO::store(p + H, a.f, count);
  IO::store(p + 2 * H, a.g, count);
  IO::store(p + 3 * H, a.o, count);
}

// Forward of `H` hidden units of one row.
//   pre_a [4H] (+ pre_b [4H] when not null): gate pre-activations
//   act [4H]: post-activation gates (may alias pre_b)
//   c_prev [H] -> c [H] (may alias c_prev) and h [H]; c_copy / h_copy, when
//   not null, receive a second copy of c / h.
template <typename scalar_t>
inline void lstm_fwd_row(int64_t H, const scalar_t* pre_a, const scalar_t* pre_b, scalar_t* act,
                         const scalar_t* c_prev, scalar_t* c, scalar_t* c_copy, scalar_t* h,
                         scalar_t* h_copy) {
  using IO = VecIO<scalar_t>;
  using Vec = typename IO::Vec;
  using math_t = typename IO::math_t;
  constexpr int64_t W = Vec::size();

  auto pre = [&](int64_t k) {
    Vec v = IO::load(pre_a + k);
    return pre_b ? v + IO::load(pre_b + k) : v;
  };
  int64_t j = 0;
  for (; j + W <= H; j += W) {
    const Gates<Vec> a = activate_gates(pre(j), pre(H + j), pre(2 * H + j), pre(3 * H + j));
    const Vec cj = cell_state(a, IO::load(c_prev + j));
    const Vec hj = hidden_state(a, cj);
    store_gates(act + j, H, a, W);
    IO::store(c + j, cj);
    IO::store(h + j, hj);
    if (c_copy) IO::store(c_copy + j, cj);
    if (h_copy) IO::store(h_copy + j, hj);
  }
  auto pre_s = [&](int64_t k) {
    math_t v = static_cast<math_t>(pre_a[k]);
    return pre_b ? v + static_cast<math_t>(pre_b[k]) : v;
  };
  for (; j < H; ++j) {
    const Gates<math_t> a =
        activate_gates(pre_s(j), pre_s(H + j), pre_s(2 * H + j), pre_s(3 * H + j));
    const math_t cj = cell_state(a, static_cast<math_t>(c_prev[j]));
    const math_t hj = hidden_state(a, cj);
    act[j] = a.i;
    act[H + j] = a.f;
    act[2 * H + j] = a.g;
    act[3 * H + j] = a.o;
    c[j] = cj;
    h[j] = hj;
    if (c_copy) c_copy[j] = cj;
    if (h_copy) h_copy[j] = hj;
  }
}

// Backward of `H` hidden units of one row.
//   dh_a [H] (+ dh_b [H] when not null): gradient reaching h
//   dc [H]: gradient reaching c; act [4H], c_prev [H], c [H] from the forward
//   -> d_gates [4H] (pre-activation gradients), dc_prev [H] (may alias dc)
template <typename scalar_t>
inline void lstm_bwd_row(int64_t H, const scalar_t* dh_a, const scalar_t* dh_b,
                         const scalar_t* dc, const scalar_t* act, const scalar_t* c_prev,
                         const scalar_t* c, scalar_t* d_gates, scalar_t* dc_prev) {
  using IO = VecIO<scalar_t>;
  using Vec = typename IO::Vec;
  using math_t = typename IO::math_t;
  constexpr int64_t W = Vec::size();

  int64_t j = 0;
  for (; j + W <= H; j += W) {
    const Gates<Vec> a = load_gates(act + j, H, W);
    Vec dh = IO::load(dh_a + j);
    if (dh_b) dh = dh + IO::load(dh_b + j);
    Vec dcp;
    const Gates<Vec> d =
        gates_backward(a, IO::load(c_prev + j), IO::load(c + j), dh, IO::load(dc + j), dcp);
    store_gates(d_gates + j, H, d, W);
    IO::store(dc_prev + j, dcp);
  }
  for (; j < H; ++j) {
    const Gates<math_t> a{static_cast<math_t>(act[j]), static_cast<math_t>(act[H + j]),
                          static_cast<math_t>(act[2 * H + j]),
                          static_cast<math_t>(act[3 * H + j])};
    math_t dh = static_cast<math_t>(dh_a[j]);
    if (dh_b) dh += static_cast<math_t>(dh_b[j]);
    math_t dcp;
    const Gates<math_t> d = gates_backward(a, static_cast<math_t>(c_prev[j]),
                                           static_cast<math_t>(c[j]), dh,
                                           static_cast<math_t>(dc[j]), dcp);
    d_gates[j] = d.i;
    d_gates[H + j] = d.f;
    d_gates[2 * H + j] = d.g;
    d_gates[3 * H + j] = d.o;
    dc_prev[j] = dcp;
  }
}

// Runs fn(row_begin, row_end) over `rows` rows of `H` units, in parallel once
// there is enough work to pay for waking the thread pool.
template <typename F>
inline void parallel_rows(int64_t rows, int64_t H, const F& fn) {
  constexpr int64_t kUnitsPerTask = 16384;
  const int64_t grain = std::max<int64_t>(1, kUnitsPerTask / std::max<int64_t>(H, 1));
  at::parallel_for(0, rows, grain, fn);
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fusedlstm
