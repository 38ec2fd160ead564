"""The op contract (csrc/ops.cpp) on the Triton kernels, as triton_ops.

    fusedlstm::triton_lstm_cell_fwd, triton_lstm_cell_bwd,
    fusedlstm::triton_lstm_layer_fwd, triton_lstm_layer_bwd

take the arguments of fusedlstm::lstm_cell_fwd etc. and return the same
results. torch.library.triton_op makes each a custom op whose body
torch.compile traces (seeing the Triton launches through wrap_triton);
the body is also the op's fake implementation, so it reads only shapes:
batch_sizes goes to the kernels as the layer plan's table, built by the op
fusedlstm::layer_plan (which checks its values on real tensors) and copied
to the device (steps.py). The autograd formula is the one
every backend shares (fusedlstm.ops.register_autograd).

Which layer implementation runs (`layer_implementation`, from shapes and
dtype alone, so the traced graph is fixed for a given configuration):
  "persistent"  persistent.py: one launch per layer and direction, W_hh on
                chip, when max(H, P) <= 128 for fp16/bf16, <= 64 for fp32
                (what ptxas fits on an sm_90 SM, see persistent.py);
  "streamed"    streamed.py: one launch, W_hh read from L2 every step, for
                the other fp16/bf16/fp32 sizes up to max(H, P) = 256;
  "per-step"    layer.py: per step one addmm and one fused cell kernel, for
                larger sizes and for float64 (cuBLAS products).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor
from torch.library import triton_op

from .. import ops as contract
from ..checks import (check_cell_bwd_args, check_cell_fwd_args, check_layer_args, check_layer_bwd_args,
                      fail)
from .cell import _lstm_cell_fwd_kernel, lstm_cell_bwd as cell_bwd_launch
from .cell import lstm_cell_fwd as cell_fwd_launch
from .launch import is_interpreted
from .layer import lstm_layer_bwd as per_step_bwd
from .layer import lstm_layer_fwd as per_step_fwd
from . import persistent, streamed
from .persistent import lstm_persistent_bwd, lstm_persistent_fwd
from .steps import Steps
from .streamed import lstm_streamed_bwd, lstm_streamed_fwd

INTERPRETED = is_interpreted(_lstm_cell_fwd_kernel)
"""True when the kernels were made by the Triton interpreter (TRITON_INTERPRET=1
at import): they then run on CPU tensors."""

def check_device(x: Tensor, name: str) -> None:
    """CUDA tensors; CPU tensors too under the Triton interpreter."""
    if x.device.type not in (("cuda", "cpu") if INTERPRETED else ("cuda",)):
        fail(f"{name} must be a CUDA tensor for the Triton kernels (CPU tensors need "
             f"TRITON_INTERPRET=1 before fusedlstm.triton is imported), got a tensor on {x.device}")


def layer_implementation(H: int, P: int, dtype) -> str:
    """The layer ops' choice for hidden size H, output size P and dtype."""
    if persistent.fits(H, P, dtype):
        return "persistent"
    if streamed.fits(H, P, dtype):
        return "streamed"
    return "per-step"


@triton_op("fusedlstm::triton_lstm_cell_fwd", mutates_args=())
def lstm_cell_fwd(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    check_cell_fwd_args(gates, c_prev)
    check_device(gates, "gates")
    return cell_fwd_launch(gates.contiguous(), c_prev.contiguous())


@triton_op("fusedlstm::triton_lstm_cell_bwd", mutates_args=())
def lstm_cell_bwd(grad_h: Tensor, grad_c: Tensor, act: Tensor, c_prev: Tensor,
                  c: Tensor) -> tuple[Tensor, Tensor]:
    check_cell_bwd_args(grad_h, grad_c, act, c_prev, c)
    check_device(act, "act")
    return cell_bwd_launch(grad_h.contiguous(), grad_c.contiguous(), act.contiguous(),
                           c_prev.contiguous(), c.contiguous())


@triton_op("fusedlstm::triton_lstm_layer_fwd", mutates_args=())
def lstm_layer_fwd(x_proj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, w_hr: Optional[Tensor],
                   batch_sizes: Optional[Tensor], reverse: bool,
                   save_for_backward: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    s = check_layer_args(x_proj, w_hh, h0, c0, w_hr, batch_sizes)
    check_device(x_proj, "x_proj")
    steps = Steps(batch_sizes, s.T, s.B, s.rows, reverse, x_proj.device)
    args = (x_proj, w_hh, h0, c0, w_hr, steps, save_for_backward)
    # Called by name, each in its own branch: torch finds a triton_op's kernels
    # (for its compile cache keys) by following calls of plain names (torch
    # 2.14 finds all six of the layer ops this way; older releases look less deep).
    implementation = layer_implementation(s.H, s.P, x_proj.dtype)
    if implementation == "persistent":
        return lstm_persistent_fwd(*args)
    if implementation == "streamed":
        return lstm_streamed_fwd(*args)
    return per_step_fwd(*args)


@triton_op("fusedlstm::triton_lstm_layer_bwd", mutates_args=())
def lstm_layer_bwd(grad_output: Optional[Tensor], grad_h_n: Optional[Tensor],
                   grad_c_n: Optional[Tensor], w_hh: Tensor, h0: Tensor, c0: Tensor,
                   w_hr: Optional[Tensor], batch_sizes: Optional[Tensor], reverse: bool,
                   output: Tensor, acts: Tensor, cells: Tensor,
                   h_raw: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    s = check_layer_bwd_args(grad_output, grad_h_n, grad_c_n, w_hh, h0, c0, w_hr, batch_sizes,
                             output, acts, cells, h_raw)
    check_device(acts, "acts")
    steps = Steps(batch_sizes, s.T, s.B, s.rows, reverse, acts.device)
    args = (grad_output, grad_h_n, grad_c_n, w_hh, h0, c0, w_hr, steps, output, acts, cells, h_raw)
    implementation = layer_implementation(s.H, s.P, acts.dtype)
    if implementation == "persistent":
        grads = lstm_persistent_bwd(*args)
    elif implementation == "streamed":
        grads = lstm_streamed_bwd(*args)
    else:
        grads = per_step_bwd(*args)
    grad_x, grad_w_hh, grad_h0, grad_c0, grad_w_hr = grads
    if grad_w_hr is None:
        grad_w_hr = acts.new_empty(0)
    return grad_x, grad_w_hh, grad_h0, grad_c0, grad_w_hr


OPS = contract.ContractOps(lstm_cell_fwd, lstm_cell_bwd, lstm_layer_fwd, lstm_layer_bwd)
contract.register_autograd(OPS)
