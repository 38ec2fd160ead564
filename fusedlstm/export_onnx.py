"""FusedLSTM and FusedLSTMCell in ONNX, as ONNX's standard LSTM operator.

Each layer and direction becomes one ONNX `LSTM` node (a cell step is a
node over one step), so any ONNX runtime runs the exported model with its
own LSTM kernels. ONNX orders the gates i, o, f, c where PyTorch orders them
i, f, g, o, and takes both biases as one [8H] input (the input's, then the
recurrent one's). As in torch's own export of nn.LSTM, the reordering is ops
on the stored parameters (Slice, Concat); the exporter folds the small ones
(the biases) into constants, and ONNX Runtime folds the rest when it loads
the model (its default graph optimisations fold ops on initialisers).

  torch.onnx.export(..., dynamo=True)   (the default) `lstm_node` writes the
        node with torch.onnx.ops.symbolic_multi_out while the model is traced;
  torch.onnx.export(..., dynamo=False)  the TorchScript exporter traces the op
        fusedlstm::lstm_layer (fusedlstm.layer), and the symbolic function
        registered here turns it into the node.

ONNX's LSTM has no output projection and no packed layout, so a FusedLSTM
with proj_size, and PackedSequence input, are refused with a message.
"""

from __future__ import annotations

import torch
from torch import Tensor

_OPSET = 9  # the symbolic serves this opset and later ones (LSTM, Gather, Concat exist since 7)
_torchscript_symbolic_registered = False


def in_onnx_export() -> bool:
    """torch.onnx.export is running. torch.onnx.is_in_onnx_export() says so, except
    where torch.export traces with dynamo (strict=True, the exporter's second way
    of capturing a model), which evaluates that function as False; the exporter's
    own flag, read here too where present, is right in both."""
    if torch.onnx.is_in_onnx_export():
        return True
    try:
        from torch.onnx._internal.exporter import _flags
    except ImportError:
        return False
    return bool(getattr(_flags, "_is_onnx_exporting", False))


def check_exportable(has_projection: bool, packed: bool) -> None:
    if has_projection:
        raise NotImplementedError(
            "fusedlstm: ONNX's LSTM operator has no output projection, so a FusedLSTM with "
            "proj_size > 0 cannot be exported to ONNX; torch.export.export can export it")
    if packed:
        raise NotImplementedError(
            "fusedlstm: ONNX export of PackedSequence input is not supported; export the model "
            "on a padded [T, B, I] tensor (torch.nn.utils.rnn.pad_packed_sequence)")


def onnx_gate_rows(H: int) -> Tensor:
    """The rows of ONNX's gates i, o, f, c in a [4H, ..] tensor ordered as PyTorch's i, f, g, o."""
    return torch.cat([torch.arange(0, H), torch.arange(3 * H, 4 * H), torch.arange(H, 3 * H)])


def _onnx_gate_order(w: Tensor) -> Tensor:
    """[4H, ..] or [4H] in PyTorch's gate order -> ONNX's."""
    return w.index_select(0, onnx_gate_rows(w.shape[0] // 4).to(w.device))


def lstm_node(input: Tensor, weights, h0: Tensor, c0: Tensor, reverse: bool):
    """One layer and direction as an ONNX LSTM node, for torch.onnx.export's
    dynamo exporter. input [T, B, I], weights a layer.LayerWeights without
    w_hr (see check_exportable), h0, c0 [B, H] -> output [T, B, H], h_n [B, H],
    c_n [B, H]."""
    w_ih, w_hh, b_ih, b_hh, _ = weights
    T, B, H = input.shape[0], input.shape[1], c0.shape[-1]
    bias = (torch.cat([_onnx_gate_order(b_ih), _onnx_gate_order(b_hh)]).unsqueeze(0)
            if b_ih is not None else None)
    y, h_n, c_n = torch.onnx.ops.symbolic_multi_out(
        "LSTM",
        [input, _onnx_gate_order(w_ih).unsqueeze(0), _onnx_gate_order(w_hh).unsqueeze(0), bias,
         None, h0.unsqueeze(0), c0.unsqueeze(0)],
        {"hidden_size": H, "direction": "reverse" if reverse else "forward"},
        dtypes=[input.dtype] * 3, shapes=[(T, 1, B, H), (1, B, H), (1, B, H)])
    # Y: [T, num_directions = 1, B, H]; Y_h, Y_c: [1, B, H].
    return y.squeeze(1), h_n.squeeze(0), c_n.squeeze(0)


def register_torchscript_symbolic() -> None:
    """Teaches the TorchScript-based exporter fusedlstm::lstm_layer (once)."""
    global _torchscript_symbolic_registered
    if not _torchscript_symbolic_registered:
        torch.onnx.register_custom_op_symbolic("fusedlstm::lstm_layer", _lstm_layer_symbolic, _OPSET)
        _torchscript_symbolic_registered = True


def _lstm_layer_symbolic(g, input, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes, reverse,
                         backend):
    from torch.onnx import symbolic_helper as sh

    check_exportable(not sh._is_none(w_hr), not sh._is_none(batch_sizes))
    reverse = sh._parse_arg(reverse, "b")
    hidden = sh._get_tensor_sizes(c0)[-1]
    if hidden is None:
        raise RuntimeError("fusedlstm: the TorchScript ONNX exporter needs the hidden size of "
                           "c_0 to be known; use torch.onnx.export(..., dynamo=True)")
    order = g.op("Constant", value_t=onnx_gate_rows(hidden))

    def reordered(w):
        return g.op("Gather", w, order, axis_i=0)

    def missing():  # an optional input left out
        value = g.op("prim::Constant")
        value.setType(torch._C.OptionalType.ofTensor())
        return value

    bias = (sh._unsqueeze_helper(g, g.op("Concat", reordered(b_ih), reordered(b_hh), axis_i=0), [0])
            if not sh._is_none(b_ih) else missing())
    y, h_n, c_n = g.op("LSTM", input, sh._unsqueeze_helper(g, reordered(w_ih), [0]),
                       sh._unsqueeze_helper(g, reordered(w_hh), [0]), bias, missing(),
                       sh._unsqueeze_helper(g, h0, [0]), sh._unsqueeze_helper(g, c0, [0]),
                       hidden_size_i=hidden, direction_s="reverse" if reverse else "forward",
                       outputs=3)
    return sh._squeeze_helper(g, y, [1]), sh._squeeze_helper(g, h_n, [0]), sh._squeeze_helper(g, c_n, [0])
