// The CUDA backend's code run on the CPU: the host code of
// csrc/cuda/lstm_cell_cuda.cuh and lstm_layer_cuda.cuh (buffers, GEMMs on
// views, per-step pointers, the choice of vector width) and the per-thread
// code of every kernel (gate math, 128-bit packs, packed and reversed steps,
// the projection, float cell state), with each pass run thread by thread on
// the host instead of launched. Checked against the CPU
// backend in float64. What only a GPU can check (the grid mapping, launches,
// streams, cuBLAS) is left to the pytest suite's CUDA tests. Built by CMake
// when the CUDA kernels are; run by ctest, no GPU needed.
#include <ATen/ATen.h>

#include <cstdio>
#include <string>
#include <vector>

#include "cpu/lstm_cpu.h"
#include "cuda/lstm_cell_cuda.cuh"
#include "cuda/lstm_layer_cuda.cuh"
#include "fusedlstm/checks.h"

namespace {

int failures = 0;
int checks = 0;

// Runs every thread's work of a pass, one after the other, instead of the
// kernel; records the vector widths used.
struct HostRows {
  int* widths_used;

  template <int VEC, typename Step>
  void run(void (*)(Step), const Step& step) const {
    *widths_used |= VEC;
    for (int64_t b = 0; b < step.n; ++b)
      for (int j = 0; j < step.H; j += VEC) step.template units<VEC>(b, j);
  }
};

void expect_close(const std::string& what, const at::Tensor& actual, const at::Tensor& expected,
                  double tol) {
  ++checks;
  if (actual.sizes() != expected.sizes()) {
    std::printf("FAIL %s: shape %s, expected %s\n", what.c_str(), c10::str(actual.sizes()).c_str(),
                c10::str(expected.sizes()).c_str());
    ++failures;
    return;
  }
  if (actual.numel() == 0) return;
  const at::Tensor a = actual.to(at::kDouble), e = expected.to(at::kDouble);
  const double err = ((a - e).abs() / (e.abs() + 1.0)).max().item<double>();
  if (!(err <= tol)) {
    std::printf("FAIL %s: max error %.3g > %.1g\n", what.c_str(), err, tol);
    ++failures;
  }
}

void expect(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    std::printf("FAIL %s\n", what.c_str());
    ++failures;
  }
}

// A copy of x that starts one element past an aligned address.
at::Tensor misaligned(const at::Tensor& x) {
  return at::empty({x.numel() + 1}, x.options()).narrow(0, 1, x.numel()).view(x.sizes()).copy_(x);
}

at::Tensor rounded(const at::Tensor& x, at::ScalarType dtype) { return x.to(dtype).to(at::kDouble); }

struct Config {
  at::ScalarType dtype;
  int64_t H;
  bool packed, proj, reverse, shift, save;
};

std::string name(const Config& c) {
  return std::string(c10::toString(c.dtype)) + " H=" + std::to_string(c.H) +
         (c.packed ? " packed" : " dense") + (c.proj ? " proj" : "") +
         (c.reverse ? " reverse" : "") + (c.shift ? " misaligned" : "") +
         (c.save ? "" : " no-save");
}

void check_layer(const Config& c) {
  const std::string id = name(c);
  const int64_t B = 4, T = 6, P = c.proj ? 5 : c.H, G = 4 * c.H;
  const double tol = c.dtype == at::kDouble ? 1e-10
                     : c.dtype == at::kFloat ? 1e-5
                     : c.dtype == at::kHalf  ? 1e-2
                                             : 5e-2;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  std::optional<at::Tensor> batch_sizes;
  int64_t rows = T * B;
  if (c.packed) {  // lengths 6, 4, 4, 1
    batch_sizes = at::tensor(std::vector<int64_t>{4, 3, 3, 3, 1, 1}, at::kLong);
    rows = 15;
  }
  // Inputs rounded to the dtype; the float64 CPU run sees the same values.
  const at::Tensor x_proj = rounded(c.packed ? at::randn({rows, G}, f64) : at::randn({T, B, G}, f64), c.dtype);
  const at::Tensor w_hh = rounded(at::randn({G, P}, f64) * 0.5, c.dtype);
  const at::Tensor h0 = rounded(at::randn({B, P}, f64), c.dtype);
  const at::Tensor c0 = rounded(at::randn({B, c.H}, f64), c.dtype);
  std::optional<at::Tensor> w_hr;
  if (c.proj) w_hr = rounded(at::randn({P, c.H}, f64) * 0.5, c.dtype);
  auto low = [&](const at::Tensor& x) { return x.to(c.dtype); };
  std::optional<at::Tensor> w_hr_low;
  if (w_hr) w_hr_low = low(*w_hr);

  const auto expected = fusedlstm::cpu::lstm_layer_fwd_cpu(x_proj, w_hh, h0, c0, w_hr, batch_sizes,
                                                           c.reverse, true);
  int widths = 0;
  const at::Tensor x_low = c.shift ? misaligned(low(x_proj)) : low(x_proj);
  const fusedlstm::LayerGeometry g =
      fusedlstm::check_layer_args(x_low, low(w_hh), low(h0), low(c0), w_hr_low, batch_sizes, c.reverse);
  const auto actual = fusedlstm::cuda::run_layer_fwd(HostRows{&widths}, g, x_low, low(w_hh),
                                                     low(h0), low(c0), w_hr_low, c.save);
  expect_close(id + " output", std::get<0>(actual), std::get<0>(expected), tol);
  expect_close(id + " h_n", std::get<1>(actual), std::get<1>(expected), tol);
  expect_close(id + " c_n", std::get<2>(actual), std::get<2>(expected), tol);
  if (c.save) {
    expect_close(id + " acts", std::get<3>(actual), std::get<3>(expected), tol);
    expect_close(id + " cells", std::get<4>(actual), std::get<4>(expected), tol);
    if (c.proj) {
      expect_close(id + " h_raw", std::get<5>(actual), std::get<5>(expected), tol);
    } else {
      expect(std::get<5>(actual).numel() == 0, id + " empty h_raw without a projection");
    }
  } else {
    expect(std::get<3>(actual).numel() == 0 && std::get<4>(actual).numel() == 0 &&
               std::get<5>(actual).numel() == 0,
           id + " empty acts, cells and h_raw without saving");
  }
  const int vec_width = 16 / static_cast<int>(c10::elementSize(c.dtype));
  const bool vector_path = c.H % vec_width == 0 && !c.shift;
  expect(widths == (vector_path ? vec_width : 1), id + " forward vector width " + std::to_string(widths));
  if (!c.save) return;

  // Backward, from the float64 forward's results (rounded), with and without
  // gradients for h_n and c_n.
  const at::Tensor out = rounded(std::get<0>(expected), c.dtype);
  const at::Tensor acts = rounded(std::get<3>(expected), c.dtype);
  const at::Tensor cells = rounded(std::get<4>(expected), c.dtype);
  const at::Tensor h_raw = rounded(std::get<5>(expected), c.dtype);
  for (bool state_grads : {true, false}) {
    const std::string bid = id + (state_grads ? " all-grads" : " none-grads");
    const at::Tensor go = rounded(at::randn(out.sizes(), f64), c.dtype);
    std::optional<at::Tensor> gh, gc, gh_low, gc_low;
    if (state_grads) {
      gh = rounded(at::randn({B, P}, f64), c.dtype);
      gc = rounded(at::randn({B, c.H}, f64), c.dtype);
      gh_low = low(*gh);
      gc_low = low(*gc);
    }
    const auto bexp = fusedlstm::cpu::lstm_layer_bwd_cpu(go, gh, gc, w_hh, h0, c0, w_hr, batch_sizes,
                                                         c.reverse, out, acts, cells, h_raw);
    int bwidths = 0;
    const at::Tensor go_low = c.shift ? misaligned(low(go)) : low(go);
    const fusedlstm::LayerGeometry gb = fusedlstm::check_layer_bwd_args(
        go_low, gh_low, gc_low, low(w_hh), low(h0), low(c0), w_hr_low, batch_sizes, c.reverse,
        low(out), low(acts), low(cells), low(h_raw));
    const auto bact = fusedlstm::cuda::run_layer_bwd(HostRows{&bwidths}, gb, go_low, gh_low, gc_low,
                                                     low(w_hh), low(h0), low(c0), w_hr_low, low(out),
                                                     low(acts), low(cells), low(h_raw));
    // Gradients sum over steps and rows: a looser bound for the half types.
    const double btol = c.dtype == at::kDouble || c.dtype == at::kFloat ? tol : 2 * tol;
    expect_close(bid + " grad_x_proj", std::get<0>(bact), std::get<0>(bexp), btol);
    expect_close(bid + " grad_w_hh", std::get<1>(bact), std::get<1>(bexp), btol);
    expect_close(bid + " grad_h0", std::get<2>(bact), std::get<2>(bexp), btol);
    expect_close(bid + " grad_c0", std::get<3>(bact), std::get<3>(bexp), btol);
    expect_close(bid + " grad_w_hr", std::get<4>(bact), std::get<4>(bexp), btol);
    const bool bvector_path = c.H % vec_width == 0 && !c.shift;
    expect(bwidths == (bvector_path ? vec_width : 1), bid + " backward vector width " + std::to_string(bwidths));
  }
}

void check_cell(at::ScalarType dtype, int64_t H, bool shift) {
  const std::string id = std::string("cell ") + c10::toString(dtype) + " H=" + std::to_string(H) +
                         (shift ? " misaligned" : "");
  const double tol = dtype == at::kDouble ? 1e-10 : dtype == at::kFloat ? 1e-5 : 1e-2;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const int64_t B = 5;
  const at::Tensor gates = rounded(at::randn({B, 4 * H}, f64) * 2, dtype);
  const at::Tensor c_prev = rounded(at::randn({B, H}, f64), dtype);
  const auto expected = fusedlstm::cpu::lstm_cell_fwd_cpu(gates, c_prev);
  const at::Tensor gates_low = shift ? misaligned(gates.to(dtype)) : gates.to(dtype);
  int widths = 0;
  const fusedlstm::CellShape s = fusedlstm::check_cell_fwd_args(gates_low, c_prev.to(dtype));
  const auto actual = fusedlstm::cuda::run_cell_fwd(HostRows{&widths}, s, gates_low, c_prev.to(dtype));
  expect_close(id + " h", std::get<0>(actual), std::get<0>(expected), tol);
  expect_close(id + " c", std::get<1>(actual), std::get<1>(expected), tol);
  expect_close(id + " act", std::get<2>(actual), std::get<2>(expected), tol);

  const at::Tensor grad_h = rounded(at::randn({B, H}, f64), dtype);
  const at::Tensor grad_c = rounded(at::randn({B, H}, f64), dtype);
  const at::Tensor act = rounded(std::get<2>(expected), dtype), c = rounded(std::get<1>(expected), dtype);
  const auto bexp = fusedlstm::cpu::lstm_cell_bwd_cpu(grad_h, grad_c, act, c_prev, c);
  const at::Tensor grad_h_low = shift ? misaligned(grad_h.to(dtype)) : grad_h.to(dtype);
  const fusedlstm::CellShape sb = fusedlstm::check_cell_bwd_args(
      grad_h_low, grad_c.to(dtype), act.to(dtype), c_prev.to(dtype), c.to(dtype));
  const auto bact = fusedlstm::cuda::run_cell_bwd(HostRows{&widths}, sb, grad_h_low, grad_c.to(dtype),
                                                  act.to(dtype), c_prev.to(dtype), c.to(dtype));
  expect_close(id + " grad_gates", std::get<0>(bact), std::get<0>(bexp), tol);
  expect_close(id + " grad_c_prev", std::get<1>(bact), std::get<1>(bexp), tol);
  const int vec_width = 16 / static_cast<int>(c10::elementSize(dtype));
  expect(widths == (H % vec_width == 0 && !shift ? vec_width : 1),
         id + " vector width " + std::to_string(widths));
}

}  // namespace

int main() {
  at::manual_seed(0);
  for (at::ScalarType dtype : {at::kDouble, at::kFloat, at::kHalf, at::kBFloat16})
    for (int64_t H : {16, 13})
      for (bool packed : {false, true})
        for (bool proj : {false, true})
          for (bool reverse : {false, true})
            for (bool shift : {false, true})
              for (bool save : {true, false}) {
                if (shift && H != 16) continue;  // misalignment matters on the vector path only
                check_layer(Config{dtype, H, packed, proj, reverse, shift, save});
              }
  for (at::ScalarType dtype : {at::kDouble, at::kFloat, at::kHalf, at::kBFloat16}) {
    check_cell(dtype, 16, false);
    check_cell(dtype, 13, false);
    check_cell(dtype, 16, true);
  }
  std::printf("%d checks, %d failures\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
