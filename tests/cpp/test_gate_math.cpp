// The shared gate math (csrc/include/fusedlstm/gate_math.h), checked on its
// own: scalar forward against long-double formulas, backward against finite
// differences, saturation without NaN, and the SIMD instantiation of the CPU
// kernels (pointwise_cpu.h) against the scalar one. Run by ctest.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/pointwise_cpu.h"
#include "fusedlstm/gate_math.h"

namespace {

int failures = 0;

void expect_near(const char* what, double actual, double expected, double tol) {
  if (!(std::fabs(actual - expected) <= tol * (1.0 + std::fabs(expected)))) {
    std::printf("FAIL %s: got %.17g, expected %.17g (tol %.1e)\n", what, actual, expected, tol);
    ++failures;
  }
}

long double sigmoid_ld(long double x) { return 1.0L / (1.0L + std::exp(-x)); }

template <typename T>
void forward_matches_formula(double tol) {
  for (double x = -12; x <= 12; x += 0.37) {
    const auto a = fusedlstm::activate_gates<T>(T(x), T(-x), T(0.5 * x), T(x + 1));
    expect_near("sigmoid(i)", a.i, sigmoid_ld(x), tol);
    expect_near("sigmoid(f)", a.f, sigmoid_ld(-x), tol);
    expect_near("tanh(g)", a.g, std::tanh(0.5L * x), tol);
    expect_near("sigmoid(o)", a.o, sigmoid_ld(x + 1), tol);
    const T c_prev = T(0.3 * x);
    const T c = fusedlstm::cell_state(a, c_prev);
    expect_near("c", c, double(a.f) * c_prev + double(a.i) * a.g, tol);
    expect_near("h", fusedlstm::hidden_state(a, c), double(a.o) * std::tanh(double(c)), tol);
  }
}

// L = dh * h + dc * c as a function of the four pre-activations and c_prev.
double loss(const double p[5], double dh, double dc) {
  const auto a = fusedlstm::activate_gates<double>(p[0], p[1], p[2], p[3]);
  const double c = fusedlstm::cell_state(a, p[4]);
  return dh * fusedlstm::hidden_state(a, c) + dc * c;
}

void backward_matches_finite_differences() {
  std::mt19937 rng(0);
  std::normal_distribution<double> normal(0.0, 1.5);
  for (int trial = 0; trial < 200; ++trial) {
    double p[5], dh = normal(rng), dc = normal(rng);
    for (double& v : p) v = normal(rng);
    const auto a = fusedlstm::activate_gates<double>(p[0], p[1], p[2], p[3]);
    const double c = fusedlstm::cell_state(a, p[4]);
    double dc_prev = 0;
    const auto d = fusedlstm::gates_backward(a, p[4], c, dh, dc, dc_prev);
    const double analytic[5] = {d.i, d.f, d.g, d.o, dc_prev};
    for (int k = 0; k < 5; ++k) {
      const double eps = 1e-6;
      double plus[5], minus[5];
      for (int j = 0; j < 5; ++j) plus[j] = minus[j] = p[j];
      plus[k] += eps;
      minus[k] -= eps;
      const double numeric = (loss(plus, dh, dc) - loss(minus, dh, dc)) / (2 * eps);
      expect_near("d/d(input) by finite differences", analytic[k], numeric, 1e-7);
    }
  }
}

void saturation_is_finite() {
  for (float x : {-1e4f, -100.0f, -88.8f, 88.8f, 100.0f, 1e4f}) {
    const auto a = fusedlstm::activate_gates<float>(x, x, x, x);
    const float c = fusedlstm::cell_state(a, 1.0f);
    const float h = fusedlstm::hidden_state(a, c);
    if (!std::isfinite(a.i) || !std::isfinite(a.g) || !std::isfinite(c) || !std::isfinite(h)) {
      std::printf("FAIL saturation at %g: i=%g g=%g c=%g h=%g\n", x, a.i, a.g, c, h);
      ++failures;
    }
  }
  expect_near("sigmoid(-1e4)", fusedlstm::Activation<float>::sigmoid(-1e4f), 0.0, 0);
  expect_near("sigmoid(1e4)", fusedlstm::Activation<float>::sigmoid(1e4f), 1.0, 0);
}

// The CPU kernel's rows (SIMD body plus scalar tail) against scalar math.
template <typename T>
void simd_rows_match_scalar(double tol) {
  const int64_t H = 37;  // not a multiple of any vector width: body and tail
  std::mt19937 rng(1);
  std::normal_distribution<double> normal(0.0, 2.0);
  std::vector<T> pre(4 * H), c_prev(H), act(4 * H), c(H), h(H), dh(H), dc(H), d_gates(4 * H), dc_prev(H);
  for (auto* v : {&pre, &c_prev, &dh, &dc})
    for (T& x : *v) x = T(normal(rng));
  fusedlstm::cpu::lstm_fwd_row<T>(H, pre.data(), nullptr, act.data(), c_prev.data(), c.data(), nullptr,
                                  h.data(), nullptr);
  fusedlstm::cpu::lstm_bwd_row<T>(H, dh.data(), nullptr, dc.data(), act.data(), c_prev.data(), c.data(),
                                  d_gates.data(), dc_prev.data());
  for (int64_t j = 0; j < H; ++j) {
    const auto a = fusedlstm::activate_gates<T>(pre[j], pre[H + j], pre[2 * H + j], pre[3 * H + j]);
    const T cj = fusedlstm::cell_state(a, c_prev[j]);
    expect_near("simd i", act[j], a.i, tol);
    expect_near("simd g", act[2 * H + j], a.g, tol);
    expect_near("simd c", c[j], cj, tol);
    expect_near("simd h", h[j], fusedlstm::hidden_state(a, cj), tol);
    T dcp;
    const auto d = fusedlstm::gates_backward(a, c_prev[j], cj, dh[j], dc[j], dcp);
    expect_near("simd d_i", d_gates[j], d.i, tol);
    expect_near("simd d_f", d_gates[H + j], d.f, tol);
    expect_near("simd d_o", d_gates[3 * H + j], d.o, tol);
    expect_near("simd dc_prev", dc_prev[j], dcp, tol);
  }
}

}  // namespace

int main() {
  forward_matches_formula<double>(1e-14);
  forward_matches_formula<float>(1e-6);
  backward_matches_finite_differences();
  saturation_is_finite();
  simd_rows_match_scalar<double>(1e-14);
  simd_rows_match_scalar<float>(2e-6);
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
  return failures ? 1 : 0;
}
