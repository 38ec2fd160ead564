"""One LSTM layer and direction as FusedLSTM runs it: the input projection of
all steps (one GEMM, both biases folded in) and the backend's recurrence.

    run(input [T, B, I] | packed [N, I], weights, h0 [B, P], c0 [B, H],
        batch_sizes [T] | None, reverse, backend) -> output [.., P], h_n [B, P], c_n [B, H]

Whether the recurrence keeps its activations for a backward pass (the
contract op's `save_for_backward`) is decided when it runs, from grad mode
and requires_grad. A traced or exported graph must not freeze that decision
at trace time, so what `run` leaves in a graph depends on who is tracing:

  eager, torch.compile   the computation itself (torch.compile guards on
                         grad mode and traces again when it changes);
  torch.jit.trace,       the op fusedlstm::lstm_layer, which decides each time
  torch.export           the graph runs: the graph is the same whatever the grad
                         mode at trace time, an inference run keeps nothing, and
                         a training run can be differentiated;
  torch.onnx.export      ONNX's own LSTM operator (fusedlstm.export_onnx).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from . import backends, export_onnx
from .ops import needs_grad


class LayerWeights(NamedTuple):
    """One layer and direction's parameters, nn.LSTM's shapes and gate order (i, f, g, o)."""

    w_ih: Tensor  # [4H, I]
    w_hh: Tensor  # [4H, P]
    b_ih: Tensor | None  # [4H]
    b_hh: Tensor | None  # [4H]
    w_hr: Tensor | None  # [P, H]


def compute(input: Tensor, weights: LayerWeights, h0: Tensor, c0: Tensor,
            batch_sizes: Tensor | None, reverse: bool, backend: str):
    """The layer on `backend` (a backends name); differentiable, and keeps the
    activations only when a backward may need them."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    bias = b_ih + b_hh if b_ih is not None else None
    x_proj = torch.nn.functional.linear(input, w_ih, bias)  # [.., 4H]
    return backends.resolve(backend, input.device).layer(x_proj, w_hh, h0, c0, w_hr, batch_sizes,
                                                         reverse)


def run(input: Tensor, weights: LayerWeights, h0: Tensor, c0: Tensor, batch_sizes: Tensor | None,
        reverse: bool, backend: str):
    """The layer, or what stands for it in a traced graph (see the module docstring)."""
    tracing, exporting = torch.jit.is_tracing(), torch.compiler.is_exporting()
    if not (tracing or exporting):
        return compute(input, weights, h0, c0, batch_sizes, reverse, backend)
    if export_onnx.in_onnx_export():
        export_onnx.check_exportable(weights.w_hr is not None, batch_sizes is not None)
        if exporting:
            return export_onnx.lstm_node(input, weights, h0, c0, reverse)
        export_onnx.register_torchscript_symbolic()
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    return torch.ops.fusedlstm.lstm_layer(input, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes,
                                          reverse, backend)


# --- fusedlstm::lstm_layer: the layer as one op, for traced graphs -----------------------------

_library = torch.library.Library("fusedlstm", "FRAGMENT")
_library.define(
    "lstm_layer(Tensor input, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr,"
    " Tensor h0, Tensor c0, Tensor? batch_sizes, bool reverse, str backend)"
    " -> (Tensor output, Tensor h_n, Tensor c_n)")


def _op_args_to_compute(input, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes, reverse, backend):
    return compute(input, LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr), h0, c0, batch_sizes, reverse,
                   backend)


def _autograd_kernel(*args):
    """With a gradient to compute, the layer's own differentiable ops (the
    contract op records its backward); without, the op below autograd, so
    that tracers below it still see one op."""
    if needs_grad(*(a for a in args if isinstance(a, Tensor))):
        return _op_args_to_compute(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.fusedlstm.lstm_layer.default(*args)


def _fake(input, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes, reverse, backend):
    torch._check(w_ih.dim() == 2 and input.shape[-1] == w_ih.shape[1],
                 lambda: f"fusedlstm::lstm_layer: input {tuple(input.shape)} does not match "
                         f"w_ih {tuple(w_ih.shape)}")
    return (input.new_empty((*input.shape[:-1], w_hh.shape[1])), h0.new_empty(h0.shape),
            c0.new_empty(c0.shape))


_library.impl("lstm_layer", _autograd_kernel, "Autograd")
_library.impl("lstm_layer", _op_args_to_compute, "CompositeExplicitAutograd")
torch.library.register_fake("fusedlstm::lstm_layer", _fake, lib=_library)
