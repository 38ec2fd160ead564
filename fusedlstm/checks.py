"""Argument checks: one rule and one message for each mistake a caller can make.

The op contract's checks (check_cell_fwd_args ... check_layer_bwd_args) are
csrc/include/fusedlstm/checks.h's rules in Python, with its messages word for
word: the C++ ops run checks.h, and the Triton ops, the reference backend and
the fake (meta) rules of fusedlstm.ops run these, so every implementation
rejects a bad argument with the same RuntimeError (tests/test_errors.py holds
them to it). A message names the argument as the caller passed it (the
backward ops' `acts`, not the forward's `x_proj`) and says what was expected
and what came.

Which argument is blamed when two disagree: the weights set the sizes H and P
(w_hh [4H, P], w_hr [P, H]), the data input sets T and B (x_proj [T, B, 4H],
or batch_sizes with packed input), and the states h0, c0 are checked against
those, as nn.LSTM checks hx against its weights and input. A cell step has no
weight: c_prev sets H, gates sets B.

Only shapes, dtypes and devices are read from fake tensors (torch.compile's
tracing); the values of batch_sizes are read when they are real, which they
are on every eager call (batch_sizes is a CPU tensor, also when the data is
on the meta device).

The modules' checks of nn.LSTM's arguments (check_size, check_same_device,
check_hidden_dtype) and of PackedSequence input are here too.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def fail(message: str):
    raise RuntimeError(f"fusedlstm: {message}")


# --- tensor rules -----------------------------------------------------------------------------

def check_dim(x: Tensor, dim: int, name: str) -> None:
    if x.dim() != dim:
        fail(f"{name} must be a {dim}-D tensor, got {x.dim()}-D of shape {list(x.shape)}")


def check_shape(x: Tensor, shape, name: str) -> None:
    if list(x.shape) != list(shape):
        fail(f"{name} must have shape {list(shape)}, got {list(x.shape)}")


def check_like(x: Tensor, ref: Tensor, name: str, ref_name: str) -> None:
    if x.dtype != ref.dtype:
        fail(f"{name} must have dtype {ref.dtype} like {ref_name}, got {x.dtype}")
    if x.device != ref.device:
        fail(f"{name} must be on {ref.device} like {ref_name}, got {x.device}")


def check_floating(x: Tensor, name: str) -> None:
    if x.dtype not in FLOATING:
        fail(f"{name} must be float32, float64, float16 or bfloat16, got {x.dtype}")


def check_batch_sizes(batch_sizes: Tensor, name: str = "batch_sizes") -> tuple[int, int] | None:
    """A PackedSequence's batch_sizes: 1-D int64 on the CPU, not empty, positive and
    non-increasing. -> (batch size, rows: their sum), or None for a fake tensor (values
    unknown). A list compared with its sorted self: 2 us at T=10 and 60 us at T=1000
    where a Python loop took 175 us and tensor comparisons 55-75 us (one thread, a
    loaded 2-core machine)."""
    if batch_sizes.dim() != 1 or batch_sizes.dtype != torch.int64 or batch_sizes.device.type != "cpu":
        fail(f"{name} must be a 1-D int64 CPU tensor, got {batch_sizes.dim()}-D {batch_sizes.dtype} "
             f"on {batch_sizes.device}")
    if batch_sizes.shape[0] == 0:
        fail(f"{name} must not be empty")
    if is_fake(batch_sizes):
        return None
    sizes = batch_sizes.tolist()
    if sizes[-1] <= 0 or sizes != sorted(sizes, reverse=True):  # positive: the last one is
        fail(f"{name} must be positive and non-increasing, got {sizes}")
    return sizes[0], sum(sizes)


# --- the op contract ---------------------------------------------------------------------------

def check_cell_fwd_args(gates: Tensor, c_prev: Tensor, gates_name: str = "gates") -> tuple[int, int]:
    """lstm_cell_fwd(gates [B, 4H], c_prev [B, H]) -> (B, H); `gates_name` is what
    the caller calls gates (lstm_cell_bwd's act)."""
    check_dim(gates, 2, gates_name)
    check_dim(c_prev, 2, "c_prev")
    check_floating(gates, gates_name)
    check_like(c_prev, gates, "c_prev", gates_name)
    B, H = gates.shape[0], c_prev.shape[1]
    check_shape(c_prev, (B, H), "c_prev")
    check_shape(gates, (B, 4 * H), gates_name)
    return B, H


def check_cell_bwd_args(grad_h: Tensor, grad_c: Tensor, act: Tensor, c_prev: Tensor,
                        c: Tensor) -> tuple[int, int]:
    B, H = check_cell_fwd_args(act, c_prev, "act")
    for x, name in ((grad_h, "grad_h"), (grad_c, "grad_c"), (c, "c")):
        check_like(x, act, name, "act")
        check_shape(x, (B, H), name)
    return B, H


def check_cell_step_args(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
                         b_ih: Tensor | None, b_hh: Tensor | None) -> tuple[int, int, int]:
    """lstm_cell_step(x [B, I], h and c [B, H], w_ih [4H, I], w_hh [4H, H], b_ih and
    b_hh [4H] or None) -> (B, I, H): the weights set I and H, x sets B."""
    check_dim(x, 2, "x")
    check_floating(x, "x")
    matrices = [(w_ih, "w_ih"), (w_hh, "w_hh"), (h, "h"), (c, "c")]
    biases = [(b, name) for b, name in ((b_ih, "b_ih"), (b_hh, "b_hh")) if b is not None]
    for t, name in matrices:
        check_dim(t, 2, name)
    for t, name in biases:
        check_dim(t, 1, name)
    for t, name in matrices + biases:
        check_like(t, x, name, "x")
    G = w_hh.shape[0]
    if G == 0 or G % 4 != 0:
        fail(f"w_hh must be [4H, H] with H > 0, got shape {list(w_hh.shape)}")
    H, I, B = G // 4, w_ih.shape[1], x.shape[0]
    check_shape(w_hh, (4 * H, H), "w_hh")
    check_shape(w_ih, (4 * H, I), "w_ih")
    check_shape(x, (B, I), "x")
    check_shape(h, (B, H), "h")
    check_shape(c, (B, H), "c")
    for t, name in biases:
        check_shape(t, (4 * H,), name)
    return B, I, H


@dataclass(frozen=True)
class LayerShape:
    T: int
    B: int
    H: int
    P: int
    rows: int  # T * B (dense) or sum(batch_sizes)


def check_layer_args(x_proj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, w_hr: Tensor | None,
                     batch_sizes: Tensor | None, input_name: str = "x_proj") -> LayerShape:
    """lstm_layer_fwd's tensors; `input_name` is what the caller calls x_proj
    (lstm_layer_bwd's acts)."""
    check_floating(x_proj, input_name)
    weights_and_states = [(w_hh, "w_hh"), (h0, "h0"), (c0, "c0")]
    if w_hr is not None:
        weights_and_states.append((w_hr, "w_hr"))
    for x, name in weights_and_states:
        check_dim(x, 2, name)
    for x, name in weights_and_states:
        check_like(x, x_proj, name, input_name)
    G, P = w_hh.shape
    if G == 0 or G % 4 != 0:
        fail(f"w_hh must be [4H, P] with H > 0, got shape {list(w_hh.shape)}")
    H = G // 4
    if w_hr is not None:
        check_shape(w_hr, (P, H), "w_hr")
    elif P != H:
        fail(f"without w_hr, w_hh must be [4H, H] = [{4 * H}, {H}], got {list(w_hh.shape)}")
    if batch_sizes is None:
        if x_proj.dim() != 3:
            fail(f"{input_name} must be [T, B, 4H] (or [N, 4H] with batch_sizes), got shape "
                 f"{list(x_proj.shape)}")
        T, B = x_proj.shape[0], x_proj.shape[1]
        if T == 0:
            fail(f"expected sequence length to be larger than 0, got {input_name} of shape "
                 f"{list(x_proj.shape)}")
        rows = T * B
        check_shape(h0, (B, P), "h0")
        check_shape(c0, (B, H), "c0")
        check_shape(x_proj, (T, B, 4 * H), input_name)
        return LayerShape(T, B, H, P, rows)
    if x_proj.dim() != 2:
        fail(f"with batch_sizes, {input_name} must be packed [N, 4H], got shape {list(x_proj.shape)}")
    sizes = check_batch_sizes(batch_sizes)
    T = batch_sizes.shape[0]
    if sizes is None:  # fake: the batch is the states'; the rows are not known
        B, rows = c0.shape[0], x_proj.shape[0]
    else:
        B, rows = sizes
        if h0.shape[0] == c0.shape[0] != B:
            fail(f"batch_sizes[0] ({B}) must equal the batch size of h0 and c0 ({c0.shape[0]})")
    check_shape(h0, (B, P), "h0")
    check_shape(c0, (B, H), "c0")
    check_shape(x_proj, (rows, 4 * H), input_name)
    return LayerShape(T, B, H, P, rows)


def check_layer_bwd_args(grad_output: Tensor | None, grad_h_n: Tensor | None,
                         grad_c_n: Tensor | None, w_hh: Tensor, h0: Tensor, c0: Tensor,
                         w_hr: Tensor | None, batch_sizes: Tensor | None, output: Tensor,
                         acts: Tensor, cells: Tensor, h_raw: Tensor) -> LayerShape:
    """lstm_layer_bwd's tensors, against the shapes of the forward they come from."""
    if acts.dim() == 1 and acts.shape[0] == 0:
        fail("acts is empty (was the forward run with save_for_backward=True?)")
    s = check_layer_args(acts, w_hh, h0, c0, w_hr, batch_sizes, "acts")
    check_like(output, acts, "output", "acts")
    check_like(cells, acts, "cells", "acts")
    lead = list(acts.shape[:-1])
    if w_hr is not None:
        check_like(h_raw, acts, "h_raw", "acts")
        if list(h_raw.shape) != lead + [s.H]:
            fail(f"with w_hr, h_raw must have shape {lead + [s.H]} (lstm_layer_fwd's h_raw), "
                 f"got {list(h_raw.shape)}")
    elif h_raw.numel() != 0:
        fail(f"without w_hr, h_raw must be empty (as lstm_layer_fwd returns it), got shape "
             f"{list(h_raw.shape)}")
    if list(output.shape) != lead + [s.P]:
        fail(f"output must have shape {lead + [s.P]}, got {list(output.shape)}")
    if list(cells.shape) != lead + [s.H]:
        fail(f"cells must have shape {lead + [s.H]} (was the forward run with "
             f"save_for_backward=True?), got {list(cells.shape)}")
    if grad_output is not None:
        check_like(grad_output, acts, "grad_output", "acts")
        check_shape(grad_output, output.shape, "grad_output")
    if grad_h_n is not None:
        check_like(grad_h_n, acts, "grad_h_n", "acts")
        check_shape(grad_h_n, (s.B, s.P), "grad_h_n")
    if grad_c_n is not None:
        check_like(grad_c_n, acts, "grad_c_n", "acts")
        check_shape(grad_c_n, (s.B, s.H), "grad_c_n")
    return s


# --- the modules' inputs: nn.LSTM's rules and messages ----------------------------------------

def check_size(name: str, value, minimum: int = 1) -> None:
    """nn.LSTM's checks of a size argument (TypeError / ValueError)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be greater than zero" if minimum == 1
                         else f"{name} must be at least {minimum}, got {value}")


def check_probability(name: str, value) -> None:
    """A dropout probability: a number in [0, 1] (nn.LSTM's rule and message)."""
    if not isinstance(value, numbers.Number) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"{name} should be a number in range [0, 1] representing the "
                         f"probability of an element being zeroed, got {value!r}")


def check_same_device(input: Tensor, weight: Tensor, hidden: tuple[Tensor, ...] = ()) -> None:
    if input.device != weight.device:
        raise RuntimeError(f"Input and parameter tensors are not at the same device, found input "
                           f"tensor at {input.device} and parameter tensor at {weight.device}")
    for h in hidden:
        if h.device != input.device:
            raise RuntimeError(f"Input and hidden tensors are not at the same device, found input "
                               f"tensor at {input.device} and hidden tensor at {h.device}")


def check_hidden_dtype(input: Tensor, hidden: tuple[Tensor, ...]) -> None:
    for k, h in enumerate(hidden):
        if h.dtype != input.dtype:
            raise RuntimeError(f"hidden[{k}] dtype ({h.dtype}) does not match input dtype "
                               f"({input.dtype})")


def check_packed_sequence(data: Tensor, batch_sizes: Tensor) -> None:
    """A PackedSequence's data [N, *] and batch_sizes are as pack_padded_sequence
    makes them. Its faults are reported as the PackedSequence's, before any op
    sees its parts."""
    sizes = check_batch_sizes(batch_sizes, "the PackedSequence's batch_sizes")
    if sizes is not None and data.shape[0] != sizes[1]:
        fail(f"the PackedSequence's data has {data.shape[0]} rows, but its batch_sizes add up to "
             f"{sizes[1]} ({batch_sizes.tolist()}); make it with torch.nn.utils.rnn.pack_padded_sequence "
             f"or pack_sequence")
