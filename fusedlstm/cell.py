"""FusedLSTMCell: torch.nn.LSTMCell's interface on the fused cell kernel.

One step at a time (e.g. generating text character by character): the two
projections are GEMMs and the gate math plus cell update is one fused op.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import backends, export_onnx
from .checks import check_hidden_dtype, check_same_device, check_size
from .layer import LayerWeights
from .layer import run as run_layer
from .lstm import autocast_enabled, refuse_torchscript


class FusedLSTMCell(nn.Module):
    """A drop-in torch.nn.LSTMCell.

    input [B, input_size] or unbatched [input_size]; hx = (h [B, H], c [B, H])
    or None for zeros -> (h' [B, H], c' [B, H]). `backend` as for FusedLSTM.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None, backend: str = "auto") -> None:
        super().__init__()
        check_size("input_size", input_size)
        check_size("hidden_size", hidden_size)
        if not isinstance(bias, bool):
            raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.backend = backends.module_setting(backend)
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.LSTMCell's initialisation (same draws for the same seed)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    __prepare_scriptable__ = refuse_torchscript

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")
                + f", backend={self.backend!r}")

    @classmethod
    def from_lstm_cell(cls, cell: nn.LSTMCell, backend: str = "auto") -> "FusedLSTMCell":
        """A FusedLSTMCell with `cell`'s configuration, device, dtype and weights (copied)."""
        w = cell.weight_ih
        fused = cls(cell.input_size, cell.hidden_size, cell.bias, device=w.device, dtype=w.dtype,
                    backend=backend)
        fused.load_state_dict(cell.state_dict())
        return fused

    def to_lstm_cell(self) -> nn.LSTMCell:
        """An nn.LSTMCell with this cell's configuration, device, dtype and weights (copied)."""
        w = self.weight_ih
        cell = nn.LSTMCell(self.input_size, self.hidden_size, self.bias, device=w.device, dtype=w.dtype)
        cell.load_state_dict(self.state_dict())
        return cell

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for k, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{k}] to be 1D or 2D, got "
                                     f"{value.dim()}D instead")
        is_batched = input.dim() == 2
        x = input if is_batched else input.unsqueeze(0)
        device_type = x.device.type
        # One lookup each: nn.Module attribute access costs ~0.6 us (measured).
        params = self._parameters
        weights = (params["weight_ih"], params["weight_hh"], params["bias_ih"], params["bias_hh"])
        # Under autocast everything runs in autocast's dtype.
        autocast = autocast_enabled(device_type)
        if x.dtype != weights[0].dtype and not (autocast and x.is_floating_point()):
            raise ValueError(f"LSTMCell input dtype ({x.dtype}) does not match weight dtype "
                             f"({weights[0].dtype})")
        batch, features = x.shape
        if features != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {features} expected "
                               f"{self.input_size}")
        if hx is None:
            h = c = x.new_zeros(batch, self.hidden_size)
        else:
            h, c = (hx[0], hx[1]) if is_batched else (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
            for k, value in enumerate((h, c)):
                if value.dim() != 2:
                    raise RuntimeError(f"LSTMCell: hx[{k}] must be {2 if is_batched else 1}-D for "
                                       f"{'batched' if is_batched else 'unbatched'} input, got "
                                       f"{hx[k].dim()}-D")
                rows, size = value.shape
                if rows != batch:
                    raise RuntimeError(f"Input batch size {batch} doesn't match hidden{k} "
                                       f"batch size {rows}")
                if size != self.hidden_size:
                    raise RuntimeError(f"hidden{k} has inconsistent hidden_size: got "
                                       f"{size}, expected {self.hidden_size}")
            if not autocast:
                check_hidden_dtype(x, (h, c))
        check_same_device(x, weights[0], () if hx is None else (h, c))
        if (torch.jit.is_tracing() or torch.compiler.is_exporting()) and export_onnx.in_onnx_export():
            # ONNX has no cell operator: the step is ONNX's LSTM over one step.
            _, h_next, c_next = run_layer(x.unsqueeze(0), LayerWeights(*weights, None), h, c, None,
                                          False, self.backend)
            return (h_next, c_next) if is_batched else (h_next.squeeze(0), c_next.squeeze(0))
        backend = backends.resolve(self.backend, x.device)
        if autocast:
            dtype = torch.get_autocast_dtype(device_type)
            with torch.autocast(device_type, enabled=False):
                weights = tuple(w.to(dtype) if w is not None else None for w in weights)
                h_next, c_next = self._step(backend, x.to(dtype), h.to(dtype), c.to(dtype), *weights)
        else:
            h_next, c_next = self._step(backend, x, h, c, *weights)
        if not is_batched:
            return h_next.squeeze(0), c_next.squeeze(0)
        return h_next, c_next

    @staticmethod
    def _step(backend, x, h, c, w_ih, w_hh, b_ih, b_hh) -> tuple[Tensor, Tensor]:
        """x [B, I], h, c [B, H]; w_ih [4H, I], w_hh [4H, H], b_* [4H] or None -> h', c'."""
        gates = torch.addmm(b_ih + b_hh, x, w_ih.t()) if b_ih is not None else x @ w_ih.t()
        return backend.cell(gates.addmm_(h, w_hh.t()), c)
