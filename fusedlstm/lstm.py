"""FusedLSTM: torch.nn.LSTM's interface on fusedlstm's kernels.

Same constructor, parameter names and shapes, initialisation, inputs
(batched, unbatched, batch_first, PackedSequence) and outputs as
torch.nn.LSTM, so state_dicts move both ways; `backend` picks the kernels.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import backends, export_onnx, regularisers
from .checks import (check_hidden_dtype, check_packed_sequence, check_probability, check_same_device,
                     check_size)
from .layer import LayerWeights
from .layer import run as run_layer


def autocast_enabled(device_type: str) -> bool:
    """torch.is_autocast_enabled, False for meta tensors (which it refuses: no autocast
    for the meta device). A string comparison: torch.amp.is_autocast_available would
    double the cost of this per-call check (2.2 -> 5.1 us, loaded 2-core machine)."""
    return device_type != "meta" and torch.is_autocast_enabled(device_type)


def refuse_torchscript(module: nn.Module):
    """torch.jit.script calls this on every module it is given (and their
    submodules) before compiling them: the modules' forward picks kernels and
    tracing strategies in Python, which TorchScript cannot compile."""
    raise RuntimeError(
        f"{type(module).__name__} cannot be compiled by torch.jit.script (TorchScript does not "
        f"compile its Python forward); use torch.compile(model), or torch.export.export(model, "
        f"args) for a graph to save and deploy (torch.jit.trace also works)")


class FusedLSTM(nn.Module):
    """Multi-layer LSTM with fused kernels; a drop-in torch.nn.LSTM.

    Args are nn.LSTM's, plus `backend`: "auto", "cpu", "cuda", "triton" or
    "reference" (see fusedlstm.backends; FUSEDLSTM_BACKEND overrides "auto"),
    and two regularisers of the recurrence, active in training mode only (see
    fusedlstm.regularisers): `weight_dropout`, DropConnect on every W_hh with a
    fresh mask per call, and `variational_dropout`, dropout on every layer's
    input with one mask per sequence for all its steps. `dropout` keeps
    nn.LSTM's meaning (a fresh mask per step, between layers).

    Shapes (L = num_layers, D = 2 if bidirectional else 1, P = proj_size or
    hidden_size): input [T, B, input_size] ([B, T, input_size] with
    batch_first, [T, input_size] unbatched, or a PackedSequence); h_0 [L*D, B, P];
    c_0 [L*D, B, hidden_size]. Returns output [T, B, D*P] (same layout as the
    input) and (h_n, c_n) shaped like (h_0, c_0).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, backend: str = "auto",
                 weight_dropout: float = 0.0, variational_dropout: float = 0.0) -> None:
        super().__init__()
        for name, p in (("dropout", dropout), ("weight_dropout", weight_dropout),
                        ("variational_dropout", variational_dropout)):
            check_probability(name, p)
        for name, flag in (("bias", bias), ("batch_first", batch_first),
                           ("bidirectional", bidirectional)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} should be of type bool, got: {type(flag).__name__}")
        check_size("input_size", input_size)
        check_size("hidden_size", hidden_size)
        check_size("num_layers", num_layers)
        if not isinstance(proj_size, int) or isinstance(proj_size, bool):
            raise TypeError(f"proj_size should be of type int, got: {type(proj_size).__name__}")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          f"non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", stacklevel=2)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.dropout, self.proj_size = float(dropout), proj_size
        self.backend = backends.module_setting(backend)
        self.weight_dropout, self.variational_dropout = float(weight_dropout), float(variational_dropout)

        factory = {"device": device, "dtype": dtype}
        gates, out_size = 4 * hidden_size, proj_size or hidden_size
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else out_size * self.num_directions
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = {"weight_ih": (gates, layer_input), "weight_hh": (gates, out_size)}
                if bias:
                    shapes.update(bias_ih=(gates,), bias_hh=(gates,))
                if proj_size:
                    shapes["weight_hr"] = (proj_size, hidden_size)
                names = []
                for kind, shape in shapes.items():
                    setattr(self, kind + suffix, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(kind + suffix)
                self._flat_weights_names += names
                self._all_weights.append(names)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def reset_parameters(self) -> None:
        """nn.LSTM's initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)),
        drawn in the same order, so equal seeds give equal weights."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def flatten_parameters(self) -> None:
        """No-op, for code written for nn.LSTM (the kernels need no flat buffer)."""

    __prepare_scriptable__ = refuse_torchscript

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        s += f", backend={self.backend!r}"
        if self.weight_dropout:
            s += f", weight_dropout={self.weight_dropout}"
        if self.variational_dropout:
            s += f", variational_dropout={self.variational_dropout}"
        return s + backends.module_note(self.backend, self.weight_ih_l0, "layer", self.hidden_size, self.proj_size)

    # --- conversion to and from nn.LSTM ---------------------------------------------------

    def _config(self) -> dict:
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                    dropout=self.dropout, bidirectional=self.bidirectional,
                    proj_size=self.proj_size)

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, backend: str = "auto", weight_dropout: float = 0.0,
                  variational_dropout: float = 0.0) -> "FusedLSTM":
        """A FusedLSTM with `lstm`'s configuration, device, dtype and weights (copied),
        and the regularisers given (nn.LSTM has none)."""
        weight = lstm.weight_ih_l0
        fused = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias, lstm.batch_first,
                    lstm.dropout, lstm.bidirectional, lstm.proj_size, device=weight.device,
                    dtype=weight.dtype, backend=backend, weight_dropout=weight_dropout,
                    variational_dropout=variational_dropout)
        fused.load_state_dict(lstm.state_dict())
        fused.train(lstm.training)
        return fused

    def to_lstm(self) -> nn.LSTM:
        """An nn.LSTM with this module's configuration, device, dtype and weights (copied).
        It has no weight_dropout or variational_dropout: it equals this module in eval()."""
        weight = self.weight_ih_l0
        lstm = nn.LSTM(**self._config(), device=weight.device, dtype=weight.dtype)
        lstm.load_state_dict(self.state_dict())
        lstm.train(self.training)
        return lstm

    # --- forward -------------------------------------------------------------------------

    def _check_input(self, input: Tensor, expected_dim: int, autocast: bool) -> None:
        weight = self.weight_ih_l0
        if input.dtype != weight.dtype and not (autocast and input.is_floating_point()):
            raise ValueError(f"RNN input dtype ({input.dtype}) does not match weight dtype "
                             f"({weight.dtype}). Convert input: input.to({weight.dtype}), or "
                             f"convert model: model.to({input.dtype})")
        if input.dim() != expected_dim:
            raise RuntimeError(f"input must have {expected_dim} dimensions, got {input.dim()}")
        if input.size(-1) != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                               f"{self.input_size}, got {input.size(-1)}")

    def _check_hidden(self, hx: tuple[Tensor, Tensor], batch: int) -> None:
        layers = self.num_layers * self.num_directions
        expected = ((layers, batch, self.proj_size or self.hidden_size),
                    (layers, batch, self.hidden_size))
        for k, (h, shape) in enumerate(zip(hx, expected)):
            if tuple(h.shape) != shape:
                raise RuntimeError(f"Expected hidden[{k}] size {shape}, got {list(h.shape)}")

    def _zero_state(self, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        layers = self.num_layers * self.num_directions
        h0 = like.new_zeros(layers, batch, self.proj_size or self.hidden_size)
        return h0, like.new_zeros(layers, batch, self.hidden_size)

    def forward(self, input, hx: tuple[Tensor, Tensor] | None = None):
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        if not isinstance(data, Tensor):
            raise TypeError(f"FusedLSTM: expected a Tensor or PackedSequence input, got "
                            f"{type(input).__name__}")
        # Under autocast everything runs in autocast's dtype (as nn.LSTM does on CUDA).
        autocast = autocast_enabled(data.device.type)
        if packed:
            if export_onnx.in_onnx_export():
                export_onnx.check_exportable(has_projection=False, packed=True)
            data, batch_sizes, sorted_indices, unsorted_indices = input
            self._check_input(data, 2, autocast)
            check_packed_sequence(data, batch_sizes)
            batch = int(batch_sizes[0])
            x, is_batched = data, True
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
            is_batched = input.dim() == 3
            batch_sizes = sorted_indices = unsorted_indices = None
            x = input if is_batched else input.unsqueeze(1)  # time-major [T, B, I]
            if is_batched and self.batch_first:
                x = x.transpose(0, 1)
            self._check_input(x, 3, autocast)
            if x.size(0) == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            batch = x.size(1)

        if hx is None:
            check_same_device(x, self.weight_ih_l0)
            hx = self._zero_state(batch, x)
        else:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2
                    and all(isinstance(h, Tensor) for h in hx)):
                raise TypeError("FusedLSTM: hx must be a tuple (h_0, c_0) of two tensors")
            want = 3 if is_batched else 2
            if hx[0].dim() != want or hx[1].dim() != want:
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                                   f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            hx = tuple(hx) if is_batched else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            self._check_hidden(hx, batch)
            check_same_device(x, self.weight_ih_l0, hx)
            if not autocast:
                check_hidden_dtype(x, hx)
            if sorted_indices is not None:
                hx = tuple(h.index_select(1, sorted_indices) for h in hx)

        if autocast:
            dtype = torch.get_autocast_dtype(x.device.type)
            with torch.autocast(x.device.type, enabled=False):
                output, h_n, c_n = self._run_layers(x.to(dtype), tuple(h.to(dtype) for h in hx),
                                                    batch_sizes, dtype)
        else:
            output, h_n, c_n = self._run_layers(x, hx, batch_sizes, x.dtype)

        if packed:
            if unsorted_indices is not None:
                h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)
        if not is_batched:
            return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, (h_n, c_n)

    def _layer_weights(self, index: int, dtype: torch.dtype) -> LayerWeights:
        """The parameters of layer and direction `index` (layer * D + direction),
        cast (differentiably) to `dtype` where they differ."""
        # The parameter dict first (an nn.Module attribute lookup costs ~0.6 us,
        # measured); getattr for names it lacks (parametrized or replaced weights).
        params = self._parameters
        weights = [params.get(name) for name in self._all_weights[index]]
        weights = [getattr(self, name) if w is None else w
                   for name, w in zip(self._all_weights[index], weights)]
        if weights[0].dtype != dtype:
            weights = [w.to(dtype) for w in weights]
        biases = (weights[2], weights[3]) if self.bias else (None, None)
        return LayerWeights(weights[0], weights[1], *biases, weights[-1] if self.proj_size else None)

    def _active_regularisers(self) -> tuple[float, float]:
        """(weight_dropout, variational_dropout) as this call applies them: both 0 in
        eval(). ONNX's LSTM node has no dropout, so an export that would need one
        (training mode with either on) is refused rather than written without it."""
        if not (self.training and (self.weight_dropout or self.variational_dropout)):
            return 0.0, 0.0
        if export_onnx.in_onnx_export():
            raise RuntimeError(
                "fusedlstm: a FusedLSTM in training mode with weight_dropout or "
                "variational_dropout cannot be exported to ONNX (ONNX's LSTM has no dropout on "
                "its recurrence); call model.eval() before torch.onnx.export, which turns them off")
        return self.weight_dropout, self.variational_dropout

    def _run_layers(self, x: Tensor, hx: tuple[Tensor, Tensor], batch_sizes: Tensor | None,
                    dtype: torch.dtype):
        """x: time-major [T, B, I] or packed [N, I] -> output [.., D*P], h_n, c_n,
        computed in `dtype`. Each layer and direction is one fusedlstm.layer.run;
        in training mode, variational dropout goes on each layer's input, weight
        dropout on its W_hh (masks drawn here, so traced graphs hold them too), and
        dropout between layers."""
        h0, c0 = hx
        h_n, c_n = [], []
        layer_input = x
        weight_dropout, variational_dropout = self._active_regularisers()
        for layer in range(self.num_layers):
            if variational_dropout:
                layer_input = regularisers.locked_dropout(layer_input, variational_dropout,
                                                          batch_sizes)
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                weights = self._layer_weights(index, dtype)
                if weight_dropout:
                    weights = weights._replace(w_hh=regularisers.drop_connect(weights.w_hh,
                                                                              weight_dropout))
                out, h, c = run_layer(layer_input, weights, h0[index], c0[index], batch_sizes,
                                      direction == 1, self.backend)
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = nn.functional.dropout(layer_input, self.dropout, training=True)
        return layer_input, torch.stack(h_n), torch.stack(c_n)
