"""Argument checks of the Triton ops: csrc/include/fusedlstm/checks.h's
checks and messages, in Python (the Triton backend builds no C++). Every
failed check raises RuntimeError naming what was expected and what came.

Only shapes, dtypes and devices are checked while tracing (fake tensors);
the values of batch_sizes are checked on real tensors, before any kernel
indexes memory with them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _fail(message: str):
    raise RuntimeError(f"fusedlstm: {message}")


def check_dim(x: Tensor, dim: int, name: str) -> None:
    if x.dim() != dim:
        _fail(f"{name} must be a {dim}-D tensor, got {x.dim()}-D of shape {list(x.shape)}")


def check_shape(x: Tensor, shape, name: str) -> None:
    if list(x.shape) != list(shape):
        _fail(f"{name} must have shape {list(shape)}, got {list(x.shape)}")


def check_like(x: Tensor, ref: Tensor, name: str, ref_name: str) -> None:
    if x.dtype != ref.dtype:
        _fail(f"{name} must have dtype {ref.dtype} like {ref_name}, got {x.dtype}")
    if x.device != ref.device:
        _fail(f"{name} must be on {ref.device} like {ref_name}, got {x.device}")


def check_floating(x: Tensor, name: str) -> None:
    if x.dtype not in FLOATING:
        _fail(f"{name} must be float32, float64, float16 or bfloat16, got {x.dtype}")


def check_device(x: Tensor, name: str, interpreted: bool) -> None:
    """CUDA tensors; CPU tensors too under the Triton interpreter."""
    allowed = ("cuda", "cpu") if interpreted else ("cuda",)
    if x.device.type not in allowed:
        _fail(f"{name} must be a CUDA tensor for the Triton kernels (CPU tensors need "
              f"TRITON_INTERPRET=1 before fusedlstm.triton is imported), got a tensor on {x.device}")


def check_cell_fwd_args(gates: Tensor, c_prev: Tensor, interpreted: bool) -> None:
    check_dim(gates, 2, "gates")
    check_dim(c_prev, 2, "c_prev")
    check_floating(gates, "gates")
    check_like(c_prev, gates, "c_prev", "gates")
    check_device(gates, "gates", interpreted)
    B, H = c_prev.shape
    check_shape(gates, (B, 4 * H), "gates")


def check_cell_bwd_args(grad_h: Tensor, grad_c: Tensor, act: Tensor, c_prev: Tensor, c: Tensor,
                        interpreted: bool) -> None:
    check_cell_fwd_args(act, c_prev, interpreted)
    for x, name in ((grad_h, "grad_h"), (grad_c, "grad_c"), (c, "c")):
        check_like(x, c_prev, name, "c_prev")
        check_shape(x, c_prev.shape, name)


@dataclass(frozen=True)
class LayerShape:
    T: int
    B: int
    H: int
    P: int
    rows: int  # T * B (dense) or sum(batch_sizes)


def check_layer_args(x_proj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, w_hr: Tensor | None,
                     batch_sizes: Tensor | None, interpreted: bool) -> LayerShape:
    check_floating(x_proj, "x_proj")
    check_device(x_proj, "x_proj", interpreted)
    check_dim(w_hh, 2, "w_hh")
    check_dim(h0, 2, "h0")
    check_dim(c0, 2, "c0")
    for x, name in ((w_hh, "w_hh"), (h0, "h0"), (c0, "c0")):
        check_like(x, x_proj, name, "x_proj")
    B, H = c0.shape
    P = w_hh.shape[1]
    if H <= 0:
        _fail(f"hidden size (c0.size(1)) must be positive, got {H}")
    check_shape(w_hh, (4 * H, P), "w_hh")
    if w_hr is not None:
        check_dim(w_hr, 2, "w_hr")
        check_like(w_hr, x_proj, "w_hr", "x_proj")
        check_shape(w_hr, (P, H), "w_hr")
    elif P != H:
        _fail(f"without w_hr, w_hh must be [4H, H] = [{4 * H}, {H}], got {list(w_hh.shape)}")
    check_shape(h0, (B, P), "h0")
    if batch_sizes is None:
        if x_proj.dim() != 3:
            _fail(f"x_proj must be [T, B, 4H] (or [N, 4H] with batch_sizes), got shape {list(x_proj.shape)}")
        T = x_proj.shape[0]
        if T <= 0:
            _fail(f"expected sequence length to be larger than 0, got {list(x_proj.shape)}")
        check_shape(x_proj, (T, B, 4 * H), "x_proj")
        return LayerShape(T, B, H, P, T * B)
    if x_proj.dim() != 2:
        _fail(f"with batch_sizes, x_proj must be packed [N, 4H], got shape {list(x_proj.shape)}")
    if batch_sizes.dim() != 1 or batch_sizes.dtype != torch.int64 or batch_sizes.device.type != "cpu":
        _fail(f"batch_sizes must be a 1-D int64 CPU tensor, got {batch_sizes.dim()}-D "
              f"{batch_sizes.dtype} on {batch_sizes.device}")
    T = batch_sizes.shape[0]
    if T <= 0:
        _fail("batch_sizes must not be empty")
    if not is_fake(batch_sizes):
        sizes = batch_sizes.tolist()
        if sizes[0] != B:
            _fail(f"batch_sizes[0] ({sizes[0]}) must equal the batch size of h0 and c0 ({B})")
        if any(n <= 0 for n in sizes) or any(b > a for a, b in zip(sizes, sizes[1:])):
            _fail(f"batch_sizes must be positive and non-increasing, got {batch_sizes}")
        check_shape(x_proj, (sum(sizes), 4 * H), "x_proj")
    return LayerShape(T, B, H, P, x_proj.shape[0])


def check_layer_bwd_args(grad_output: Tensor | None, grad_h_n: Tensor | None,
                         grad_c_n: Tensor | None, w_hh: Tensor, h0: Tensor, c0: Tensor,
                         w_hr: Tensor | None, batch_sizes: Tensor | None, output: Tensor,
                         acts: Tensor, cells: Tensor, h_raw: Tensor, interpreted: bool) -> LayerShape:
    s = check_layer_args(acts, w_hh, h0, c0, w_hr, batch_sizes, interpreted)
    check_like(output, acts, "output", "acts")
    check_like(cells, acts, "cells", "acts")
    lead = list(acts.shape[:-1])
    if list(output.shape) != lead + [s.P]:
        _fail(f"output must have shape {lead + [s.P]}, got {list(output.shape)}")
    if list(cells.shape) != lead + [s.H]:
        _fail(f"cells must have shape {lead + [s.H]} (was the forward run with "
              f"save_for_backward=True?), got {list(cells.shape)}")
    if w_hr is not None:
        check_like(h_raw, acts, "h_raw", "acts")
        if list(h_raw.shape) != lead + [s.H]:
            _fail(f"with w_hr, h_raw must have shape {lead + [s.H]} (lstm_layer_fwd's h_raw), "
                  f"got {list(h_raw.shape)}")
    elif h_raw.numel() != 0:
        _fail(f"without w_hr, h_raw must be empty (as lstm_layer_fwd returns it), got shape "
              f"{list(h_raw.shape)}")
    if grad_output is not None:
        check_like(grad_output, acts, "grad_output", "acts")
        if grad_output.shape != output.shape:
            _fail(f"grad_output must have shape {list(output.shape)}, got {list(grad_output.shape)}")
    if grad_h_n is not None:
        check_like(grad_h_n, acts, "grad_h_n", "acts")
        check_shape(grad_h_n, (s.B, s.P), "grad_h_n")
    if grad_c_n is not None:
        check_like(grad_c_n, acts, "grad_c_n", "acts")
        check_shape(grad_c_n, (s.B, s.H), "grad_c_n")
    return s
