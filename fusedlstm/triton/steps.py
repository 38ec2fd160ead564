"""Where the steps of one layer live on the device, read from the layer's plan
(fusedlstm.plan), and the weight gradients both layer implementations form
after their loop.

The Triton ops read batch_sizes on the host only through the plan's op
(fusedlstm::layer_plan, which validates it): a triton_op's body is also its
fake implementation and the graph torch.compile traces, where batch_sizes
is a fake tensor without values. The plan's table goes to the device, and
the gathers between the packed layout and a padded one are tensors computed
from it there; every shape below comes from argument shapes.

Layouts (B batch, T steps, N = sum(batch_sizes) packed rows):
  packed  [N, W]     rows of step t at offset .. offset + rows of its entry
  padded  [T, B, W]  row b of step t at [t, b]; for packed input, position
                     (t, b) with b >= the step's rows holds `initial[b]`
                     (zeros when not given), a value no kernel uses
Dense input is already padded: [T, B, W] with every row taking part. Its
plan is known without a table (entry k: step t = k, or T - 1 - k reverse,
B rows at t * B, all continuing after entry 0), so dense input has none on
the device: plan_entry computes those values, the plan's, in the kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import plan


@triton.jit
def plan_entry(plan_ptr, k, T, B, REVERSE: tl.constexpr, PACKED: tl.constexpr):
    """Entry k of the layer's plan: (offset, rows, continuing, prev_offset),
    int64. Packed: row k of the int64 [T, 4] table at plan_ptr. Dense: the
    same values computed (module docstring), in int64: t * B passes 2^31
    rows at sizes an H200 holds."""
    if PACKED:
        entry = plan_ptr + 4 * k
        return tl.load(entry), tl.load(entry + 1), tl.load(entry + 2), tl.load(entry + 3)
    else:
        if REVERSE:
            t = T - 1 - k
            t_prev = t + 1
        else:
            t = k
            t_prev = k - 1
        rows = tl.cast(B, tl.int64)
        offset = tl.cast(t, tl.int64) * rows
        first = k == 0
        continuing = tl.where(first, 0, rows)
        prev_offset = tl.where(first, 0, tl.cast(t_prev, tl.int64) * rows)
        return offset, rows, continuing, prev_offset


@triton.jit
def entry_rows(plan_ptr, k, b, T, B, REVERSE: tl.constexpr, PACKED: tl.constexpr):
    """For batch rows b [BLOCK_B] in plan entry k: (their rows in the per-step
    layout [BLOCK_B] int64, which of them take part, their rows in entry k - 1
    int64, which of them continue from it rather than start from h0 and c0)."""
    offset, rows, continuing, prev_offset = plan_entry(plan_ptr, k, T, B, REVERSE, PACKED)
    return offset + b, b < rows, prev_offset + b, b < continuing


class Steps:
    """The step layout of a layer: dense (batch_sizes None) or packed."""

    def __init__(self, batch_sizes: Tensor | None, T: int, B: int, N: int, reverse: bool,
                 device: torch.device):
        self.T, self.B, self.N, self.reverse = T, B, N, reverse
        self.packed = batch_sizes is not None
        self.order = plan.processing_order(T, reverse)  # step of plan entry k, at [k]
        if not self.packed:
            self.table = None  # the kernels compute the dense plan (plan_entry)
            return
        self.table = plan.on_device(plan.layer_plan(batch_sizes, T, B, reverse), device)  # [T, 4]
        by_time = self.table.flip(0) if reverse else self.table                 # entry of step t at [t]
        offsets, sizes = by_time[:, plan.OFFSET], by_time[:, plan.ROWS]           # [T]
        b = torch.arange(B, device=device)
        self.active = b[None, :] < sizes[:, None]                                 # [T, B]
        start = b + N                                                             # row b of `initial`
        rows = torch.where(self.active, offsets[:, None] + b[None, :], start[None, :])
        self.padded_index = rows.flatten()                                        # [T * B] into [N + B]
        previous = torch.where(b[None, :] < by_time[:, plan.CONTINUING, None],
                               by_time[:, plan.PREV_OFFSET, None] + b[None, :], start[None, :])
        self.previous_index = previous.flatten()                                  # [T * B] into [N + B]
        r = torch.arange(N, device=device)
        step_of_row = torch.searchsorted(offsets + sizes, r, right=True)         # [N]
        self.packed_index = step_of_row * B + (r - offsets[step_of_row])          # [N] into [T * B]

    def rows(self, k: int) -> tuple[Tensor, int] | None:
        """The cell kernels' `rows` argument for plan entry k (None: all rows)."""
        return (self.table, k) if self.packed else None

    def to_padded(self, x: Tensor, initial: Tensor | None = None) -> Tensor:
        """Per-step x ([N, W] packed or [T, B, W]) -> contiguous [T, B, W]; for
        packed x, positions of rows that do not take part hold `initial[b]`."""
        if not self.packed:
            return x.contiguous()
        return self._gather(x, initial, self.padded_index).view(self.T, self.B, -1)

    def to_packed(self, x: Tensor) -> Tensor:
        """[T, B, W] -> the layer's per-step layout ([N, W] packed or [T, B, W])."""
        if not self.packed:
            return x
        return x.reshape(self.T * self.B, -1).index_select(0, self.packed_index)

    def commit(self, state: Tensor, new: Tensor, t: int) -> None:
        """state[b] = new[b] for the rows taking part in step t ([B, W])."""
        if self.packed:
            state.copy_(torch.where(self.active[t, :, None], new, state))
        else:
            state.copy_(new)

    def previous_padded(self, x: Tensor, initial: Tensor) -> Tensor:
        """Per-step values (per-step layout) -> [T, B, W]: the value each step
        starts from, the plan's: x of the entry processed just before for rows
        that continue from it, `initial` ([B, W]) for the others."""
        if self.packed:
            return self._gather(x, initial, self.previous_index).view(self.T, self.B, -1)
        first = initial[None]
        if self.reverse:
            return torch.cat([x[1:], first])
        return torch.cat([first, x[:-1]])

    def previous(self, x: Tensor, initial: Tensor) -> Tensor:
        """previous_padded in the layer's per-step layout."""
        if self.packed:
            return self._gather(x, initial, self.previous_index.index_select(0, self.packed_index))
        return self.previous_padded(x, initial)

    def _gather(self, x: Tensor, initial: Tensor | None, index: Tensor) -> Tensor:
        """Rows of [x; initial] ([N + B, W]; zeros for a missing `initial`)."""
        if initial is None:
            initial = x.new_zeros(self.B, x.shape[1])
        return torch.cat([x, initial]).index_select(0, index)


def weight_gradients(steps: Steps, grad_x: Tensor, output: Tensor, h0: Tensor, h_raw: Tensor,
                     grad_out: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The weight gradients of a layer as single GEMMs over all steps.

    grad_x [.., 4H] (pre-activation gradients), output [.., P], h_raw [.., H]
    (o * tanh(c), saved by the forward) and grad_out [.., P] (dL/d(projected
    h)) with a projection, all in the per-step layout; h0 [B, P].
    -> grad_w_hh [4H, P], grad_w_hr [P, H] (None without a projection)."""
    h_prev = steps.previous(output, h0).flatten(0, -2)                # [rows, P]
    grad_w_hh = grad_x.flatten(0, -2).t().mm(h_prev)                   # [4H, P]
    if grad_out is None:
        return grad_w_hh, None
    return grad_w_hh, grad_out.flatten(0, -2).t().mm(h_raw.flatten(0, -2))  # [P, H]
