// The CUDA layer ops' entry to the persistent kernels: the layer's tensors
// in, the op contract's results out when the cluster-resident kernels take
// the layer (persistent_tier.h decides), nothing when it stays on the
// per-step path. Called by lstm_layer_cuda.cu after its argument checks,
// inside its device guard.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace fusedlstm::persistent {

std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>> try_layer_fwd_cuda(
    const at::Tensor& x_proj, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& batch_sizes, bool reverse,
    bool save_for_backward);

std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>> try_layer_bwd_cuda(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& batch_sizes, bool reverse,
    const at::Tensor& output, const at::Tensor& acts, const at::Tensor& cells, const at::Tensor& h_raw);

}  // namespace fusedlstm::persistent
