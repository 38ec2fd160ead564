// LSTM gate math: the one definition shared by the CPU and CUDA kernels.
//
// Gate order is PyTorch's (i, f, g, o). For one hidden unit, with
// pre-activations (pi, pf, pg, po) and previous cell state c_prev:
//
//   i = sigmoid(pi)   f = sigmoid(pf)   g = tanh(pg)   o = sigmoid(po)
//   c = f * c_prev + i * g
//   h = o * tanh(c)
//
// Backward, given dh = dL/dh and dc = dL/dc (the gradient reaching c from the
// next step), with tc = tanh(c):
//
//   dc_total = dc + dh * o * (1 - tc^2)
//   d_pi = dc_total * g      * i * (1 - i)
//   d_pf = dc_total * c_prev * f * (1 - f)
//   d_pg = dc_total * i      * (1 - g^2)
//   d_po = dh * tc           * o * (1 - o)
//   dc_prev = dc_total * f
//
// Every function is a template over the arithmetic type T so that the same
// formulas run on scalars (float, double; CUDA threads, CPU tails) and on SIMD
// vectors (the CPU kernels instantiate them with at::vec::Vectorized<float>).
// Half and bfloat16 data is computed in float by every backend.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FUSEDLSTM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FUSEDLSTM_HOST_DEVICE inline
#endif

#include <cmath>

namespace fusedlstm {
// The CPU kernels are compiled once per SIMD level (CPU_CAPABILITY), each level's
// copy of these inline functions in its own namespace (csrc/cpu/lstm_cpu.h).
#ifdef CPU_CAPABILITY
inline namespace CPU_CAPABILITY {
#endif

// Scalar math, spelled so that host and device compilers pick the single- or
// double-precision routine (an unqualified exp(float) may run in double).
FUSEDLSTM_HOST_DEVICE float exp_scalar(float x) { return ::expf(x); }
FUSEDLSTM_HOST_DEVICE double exp_scalar(double x) { return ::exp(x); }
FUSEDLSTM_HOST_DEVICE float tanh_scalar(float x) { return ::tanhf(x); }
FUSEDLSTM_HOST_DEVICE double tanh_scalar(double x) { return ::tanh(x); }

// Activation functions for one arithmetic type. The primary template covers
// float and double; the CPU kernels specialise it for SIMD vector types.
template <typename T>
struct Activation {
  static FUSEDLSTM_HOST_DEVICE T sigmoid(T x) {
    // exp(-x) overflows to +inf for x < -88 (float): 1 / inf = 0, no NaN.
    return T(1) / (T(1) + exp_scalar(-x));
  }
  static FUSEDLSTM_HOST_DEVICE T tanh(T x) {
    return tanh_scalar(x);
  }
};

// Post-activation gates of one hidden unit.
template <typename T>
struct Gates {
  T i, f, g, o;
};

// Forward of one hidden unit: pre-activations -> activations, c and h.
template <typename T>
FUSEDLSTM_HOST_DEVICE Gates<T> activate_gates(T pi, T pf, T pg, T po) {
  using A = Activation<T>;
  return Gates<T>{A::sigmoid(pi), A::sigmoid(pf), A::tanh(pg), A::sigmoid(po)};
}

template <typename T>
FUSEDLSTM_HOST_DEVICE T cell_state(const Gates<T>& a, T c_prev) {
  return a.f * c_prev + a.i * a.g;
}

template <typename T>
FUSEDLSTM_HOST_DEVICE T hidden_state(const Gates<T>& a, T c) {
  return a.o * Activation<T>::tanh(c);
}

// Backward of one hidden unit. `dh` and `dc` are the gradients reaching h and
// c of this step; returns the pre-activation gradients and writes dc_prev.
template <typename T>
FUSEDLSTM_HOST_DEVICE Gates<T> gates_backward(
    const Gates<T>& a, T c_prev, T c, T dh, T dc, T& dc_prev) {
  const T one(1);
  const T tc = Activation<T>::tanh(c);
  const T dc_total = dc + dh * a.o * (one - tc * tc);
  dc_prev = dc_total * a.f;
  return Gates<T>{
      dc_total * a.g * a.i * (one - a.i),
      dc_total * c_prev * a.f * (one - a.f),
      dc_total * a.i * (one - a.g * a.g),
      dh * tc * a.o * (one - a.o)};
}

#ifdef CPU_CAPABILITY
}  // namespace CPU_CAPABILITY
#endif
}  // namespace fusedlstm
