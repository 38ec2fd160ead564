// CPU implementations of the op contract (csrc/ops.cpp).
//
// The kernel sources are compiled once per SIMD level (build_config.json's
// cpu_capabilities: AVX512, AVX2, DEFAULT), each time with CPU_CAPABILITY=<level>
// and the level's compiler flags, as ATen's own CPU kernels are. Each level's code
// lives in namespace fusedlstm::cpu::<level> (an inline namespace, so the kernel
// sources name it fusedlstm::cpu), and so do the inline functions of the kernel
// headers: the linker keeps one copy of an inline function per name, and an
// AVX-512 copy must never serve the DEFAULT kernels. register_cpu.cpp chooses one
// level per process, from the CPU's flags, and registers it for the CPU key.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <utility>

#include "cpu_capability.h"

namespace fusedlstm::cpu {

// The kernels' signatures (shapes in csrc/ops.cpp).
using LstmCellFwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor& gates,
                                                                   const at::Tensor& c_prev);
using LstmCellBwd = std::tuple<at::Tensor, at::Tensor>(const at::Tensor& grad_h,
                                                       const at::Tensor& grad_c,
                                                       const at::Tensor& act,
                                                       const at::Tensor& c_prev,
                                                       const at::Tensor& c);
using LstmLayerFwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& x_proj, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& batch_sizes,
    bool reverse, bool save_for_backward);
using LstmLayerBwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& w_hh, const at::Tensor& h0,
    const at::Tensor& c0, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, const at::Tensor& output,
    const at::Tensor& acts, const at::Tensor& cells, const at::Tensor& h_raw);

// The kernels of one SIMD level (kernel_table.cpp, compiled once per level).
struct Kernels {
  LstmCellFwd* lstm_cell_fwd;
  LstmCellBwd* lstm_cell_bwd;
  LstmLayerFwd* lstm_layer_fwd;
  LstmLayerBwd* lstm_layer_bwd;
};

#ifdef CPU_CAPABILITY
// In the kernel sources: this level's kernels.
inline namespace CPU_CAPABILITY {
LstmCellFwd lstm_cell_fwd_cpu;
LstmCellBwd lstm_cell_bwd_cpu;
LstmLayerFwd lstm_layer_fwd_cpu;
LstmLayerBwd lstm_layer_bwd_cpu;
extern const Kernels kernels;
}  // namespace CPU_CAPABILITY
#else
// Everywhere else: the kernels of the level this process runs (cpu_capability.h).
const Kernels& active_kernels();

// Calls `kernel` of the active level.
template <auto kernel>
struct ActiveKernel;
template <typename R, typename... Args, R (*Kernels::*kernel)(Args...)>
struct ActiveKernel<kernel> {
  static R call(Args... args) { return (active_kernels().*kernel)(std::forward<Args>(args)...); }
};

// The op contract's CPU kernels, at the active level.
inline constexpr LstmCellFwd* lstm_cell_fwd_cpu = &ActiveKernel<&Kernels::lstm_cell_fwd>::call;
inline constexpr LstmCellBwd* lstm_cell_bwd_cpu = &ActiveKernel<&Kernels::lstm_cell_bwd>::call;
inline constexpr LstmLayerFwd* lstm_layer_fwd_cpu = &ActiveKernel<&Kernels::lstm_layer_fwd>::call;
inline constexpr LstmLayerBwd* lstm_layer_bwd_cpu = &ActiveKernel<&Kernels::lstm_layer_bwd>::call;
#endif

}  // namespace fusedlstm::cpu
