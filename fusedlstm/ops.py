"""The op contract's Python half: fake (meta) rules and autograd formulas.

The ops themselves are declared in csrc/ops.cpp (namespace `fusedlstm`) and
implemented per backend; every implementation of the contract -- the C++
ops here, the Triton ops in fusedlstm.triton -- gets the same fake rules and
the same autograd formula, which calls the backend's own backward op (one
autograd node per layer and direction, not per step), or under double
backward the reference's differentiable formulas.

    lstm_cell_fwd(gates [B,4H], c_prev [B,H]) -> h [B,H], c [B,H], act [B,4H]
    lstm_cell_bwd(grad_h, grad_c, act, c_prev, c) -> grad_gates [B,4H], grad_c_prev [B,H]
    lstm_layer_fwd(x_proj [T,B,4H]|[N,4H], w_hh [4H,P], h0 [B,P], c0 [B,H], w_hr [P,H]?,
                   batch_sizes [T]?, reverse, save_for_backward)
        -> output [..,P], h_n [B,P], c_n [B,H], acts [..,4H], cells [..,H], h_raw [..,H]
           (h_raw: o * tanh(c) with w_hr, else empty; acts, cells and h_raw are
           empty unless save_for_backward)
    lstm_layer_bwd(grad_output?, grad_h_n?, grad_c_n?, w_hh, h0, c0, w_hr?, batch_sizes?,
                   reverse, output, acts, cells, h_raw)
        -> grad_x_proj, grad_w_hh, grad_h0, grad_c0, grad_w_hr
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from . import _extension, checks, reference

CONTRACT = ("lstm_cell_fwd", "lstm_cell_bwd", "lstm_layer_fwd", "lstm_layer_bwd")


# --- fake (meta) rules: output shapes from input shapes --------------------------------------
# They check their arguments as the C++ ops do (fusedlstm.checks: same rules, same messages),
# so that a traced or meta call fails where an eager one would.

def cell_fwd_fake(gates: Tensor, c_prev: Tensor):
    checks.check_cell_fwd_args(gates, c_prev)
    return torch.empty_like(c_prev), torch.empty_like(c_prev), torch.empty_like(gates)


def cell_bwd_fake(grad_h, grad_c, act, c_prev, c):
    checks.check_cell_bwd_args(grad_h, grad_c, act, c_prev, c)
    return torch.empty_like(act), torch.empty_like(c_prev)


def layer_fwd_fake(x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse, save_for_backward):
    s = checks.check_layer_args(x_proj, w_hh, h0, c0, w_hr, batch_sizes)
    lead = x_proj.shape[:-1]
    if save_for_backward:
        acts, cells = x_proj.new_empty(x_proj.shape), x_proj.new_empty((*lead, s.H))
    else:
        acts, cells = x_proj.new_empty(0), x_proj.new_empty(0)
    h_raw = x_proj.new_empty((*lead, s.H)) if save_for_backward and w_hr is not None else x_proj.new_empty(0)
    return (x_proj.new_empty((*lead, s.P)), h0.new_empty(h0.shape), c0.new_empty(c0.shape), acts, cells,
            h_raw)


def layer_bwd_fake(grad_output, grad_h_n, grad_c_n, w_hh, h0, c0, w_hr, batch_sizes, reverse,
                   output, acts, cells, h_raw):
    checks.check_layer_bwd_args(grad_output, grad_h_n, grad_c_n, w_hh, h0, c0, w_hr, batch_sizes,
                                output, acts, cells, h_raw)
    grad_w_hr = w_hr.new_empty(w_hr.shape) if w_hr is not None else acts.new_empty(0)
    return (acts.new_empty(acts.shape), w_hh.new_empty(w_hh.shape), h0.new_empty(h0.shape),
            c0.new_empty(c0.shape), grad_w_hr)


FAKE_RULES = dict(zip(CONTRACT, (cell_fwd_fake, cell_bwd_fake, layer_fwd_fake, layer_bwd_fake)))


def layer_plan_fake(batch_sizes, T, B, reverse):
    """fusedlstm::layer_plan: the plan's table, int64 [T, 4] on the CPU (fusedlstm/plan.py)."""
    return torch.empty((T, 4), dtype=torch.int64, device="cpu")


# --- autograd ------------------------------------------------------------------------------
# The backward ops compute first derivatives only. When the backward runs in grad mode
# (torch.autograd.grad(..., create_graph=True): double backward, gradient penalties,
# Hessian-vector products), the gradients are computed instead by the reference's explicit
# backward on a differentiable recomputation of the forward from the saved inputs, so that
# autograd can differentiate them again. That needs the forward's inputs (gates, x_proj)
# saved beside its activations, as PyTorch's own fused LSTM cell does (derivatives.yaml,
# _thnn_fused_lstm_cell). They cost half as much memory again as the activations (saved
# tensors of a 2-layer H=128 layer: 21.4 MiB instead of 13.4 MiB at T=64, B=32), for a
# feature few models use, so a forward keeps them only inside `double_backward()`; a
# backward with create_graph=True without them raises an error saying so (cuDNN's LSTM
# has no double backward at all).

_keep_inputs = threading.local()


@contextlib.contextmanager
def double_backward(enabled: bool = True) -> Iterator[None]:
    """Forwards run inside keep their inputs, so that their backward can be
    differentiated again (torch.autograd.grad(..., create_graph=True)).

        with fusedlstm.double_backward():
            out, _ = lstm(x)
        (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        g.pow(2).sum().backward()

    Read when a forward runs (under torch.compile: when it is traced), per thread."""
    previous = getattr(_keep_inputs, "enabled", False)
    _keep_inputs.enabled = enabled
    try:
        yield
    finally:
        _keep_inputs.enabled = previous


def _keeps_inputs() -> bool:
    return getattr(_keep_inputs, "enabled", False)


def _check_inputs_kept(kept: Tensor | None) -> None:
    if kept is None:
        raise RuntimeError(
            "fusedlstm: a backward with create_graph=True (double backward: gradient penalties, "
            "Hessian-vector products) needs the forward's inputs, which are kept only on request; "
            "run the forward inside `with fusedlstm.double_backward():` (it keeps the gate "
            "pre-activations: about 1.5x the activation memory)")


def register_autograd(ops: "ContractOps") -> None:
    """Attach the contract's autograd formulas to one backend's forward ops."""

    def cell_setup(ctx, inputs, output):
        gates, c_prev = inputs
        _, c, act = output
        ctx.save_for_backward(gates if _keeps_inputs() else None, c_prev, act, c)
        ctx.mark_non_differentiable(act)
        ctx.set_materialize_grads(False)

    def cell_backward(ctx, grad_h, grad_c, _grad_act):
        gates, c_prev, act, c = ctx.saved_tensors
        if grad_h is None:
            grad_h = torch.zeros_like(c)
        if grad_c is None:
            grad_c = torch.zeros_like(c)
        if torch.is_grad_enabled():
            _check_inputs_kept(gates)
            _, c, act = reference.lstm_cell_fwd(gates, c_prev)
            return reference.lstm_cell_bwd(grad_h, grad_c, act, c_prev, c)
        return ops.cell_bwd(grad_h, grad_c, act, c_prev, c)

    def layer_setup(ctx, inputs, output):
        x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse, save_for_backward = inputs
        out, _, _, acts, cells, h_raw = output
        ctx.save_for_backward(x_proj if _keeps_inputs() else None, w_hh, h0, c0, w_hr, batch_sizes,
                              out, acts, cells, h_raw)
        ctx.reverse, ctx.saved_activations = reverse, save_for_backward
        ctx.mark_non_differentiable(acts, cells, h_raw)
        ctx.set_materialize_grads(False)

    def layer_backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_acts, _grad_cells, _grad_h_raw):
        if not ctx.saved_activations:
            raise RuntimeError("fusedlstm: lstm_layer_fwd ran with save_for_backward=False, "
                               "so it cannot be differentiated; run it with True")
        x_proj, w_hh, h0, c0, w_hr, batch_sizes, out, acts, cells, h_raw = ctx.saved_tensors
        backward = ops.layer_bwd
        if torch.is_grad_enabled():
            _check_inputs_kept(x_proj)
            out, _, _, acts, cells, h_raw = reference.lstm_layer_fwd(
                x_proj, w_hh, h0, c0, w_hr, batch_sizes, ctx.reverse, True)
            backward = reference.lstm_layer_bwd
        grad_x, grad_w_hh, grad_h0, grad_c0, grad_w_hr = backward(
            grad_output, grad_h_n, grad_c_n, w_hh, h0, c0, w_hr, batch_sizes, ctx.reverse,
            out, acts, cells, h_raw)
        return (grad_x, grad_w_hh, grad_h0, grad_c0,
                grad_w_hr if w_hr is not None else None, None, None, None)

    torch.library.register_autograd(ops.cell_fwd, cell_backward, setup_context=cell_setup)
    torch.library.register_autograd(ops.layer_fwd, layer_backward, setup_context=layer_setup)


# --- one backend's implementation of the contract ------------------------------------------

def needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


@dataclass(frozen=True)
class ContractOps:
    """The four ops of one backend, and the differentiable calls built on them."""

    cell_fwd: Callable
    cell_bwd: Callable
    layer_fwd: Callable
    layer_bwd: Callable

    def cell(self, gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
        h, c, _ = self.cell_fwd(gates, c_prev)
        return h, c

    def layer(self, x_proj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, w_hr: Tensor | None,
              batch_sizes: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
        args = (x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse)
        if needs_grad(x_proj, w_hh, h0, c0, w_hr):
            output, h_n, c_n, *_ = self.layer_fwd(*args, True)
        elif torch.compiler.is_compiling():
            output, h_n, c_n, *_ = self.layer_fwd(*args, False)
        else:
            # Nothing to record: straight to the kernel, past the autograd
            # formula's Python wrapper (~6 us a call, measured at B=1, H=128).
            with torch._C._AutoDispatchBelowAutograd():
                output, h_n, c_n, *_ = self.layer_fwd(*args, False)
        return output, h_n, c_n


def _register_cpp_ops() -> ContractOps | None:
    """The C++ ops (CPU and, when compiled, CUDA kernels), or None if not built."""
    if not _extension.loaded():
        return None
    for name, rule in FAKE_RULES.items():
        torch.library.register_fake(f"fusedlstm::{name}")(rule)
    torch.library.register_fake("fusedlstm::layer_plan")(layer_plan_fake)
    ops = ContractOps(*(getattr(torch.ops.fusedlstm, name).default for name in CONTRACT))
    register_autograd(ops)
    return ops


cpp = _register_cpp_ops()
