"""Where the steps of one layer live, computed on the device with torch ops,
and the weight gradients both layer implementations form after their loop.

The Triton ops never read batch_sizes on the host (after validating it): a
triton_op's body is also its fake implementation and the graph torch.compile
traces, where batch_sizes is a fake tensor without values. Step sizes,
offsets and the gathers between the packed layout and a padded one are
therefore tensors, and every shape below comes from argument shapes.

Layouts (B batch, T steps, N = sum(batch_sizes) packed rows):
  packed  [N, W]     rows of step t at offsets[t] .. offsets[t] + sizes[t]
  padded  [T, B, W]  row b of step t at [t, b]; for packed input, position
                     (t, b) with b >= sizes[t] holds the value that
                     sequence b carries through step t (see `to_padded`)
Dense input is already padded: [T, B, W] with every row taking part.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Steps:
    """The step layout of a layer: dense (batch_sizes None) or packed."""

    def __init__(self, batch_sizes: Tensor | None, T: int, B: int, N: int, reverse: bool,
                 device: torch.device):
        self.T, self.B, self.N, self.reverse = T, B, N, reverse
        self.packed = batch_sizes is not None
        self.order = range(T - 1, -1, -1) if reverse else range(T)
        if not self.packed:
            self.sizes = self.offsets = None  # the layer kernels' step tables: none for dense input
            return
        sizes = batch_sizes.to(device=device, dtype=torch.int64)               # [T]
        ends = torch.cumsum(sizes, 0)
        offsets = ends - sizes
        self.sizes, self.offsets = sizes.to(torch.int32), offsets.to(torch.int32)  # for kernels
        b = torch.arange(B, device=device)
        self.active = b[None, :] < sizes[:, None]                                 # [T, B]
        rows = offsets[:, None] + b[None, :]                                      # [T, B]
        if reverse:  # a sequence that has not started yet carries its initial state
            carried = b + N
        else:        # one that has ended carries the value of its last step
            lengths = self.active.sum(0)
            carried = offsets[lengths - 1] + b
        self.carried = torch.where(self.active, rows, carried[None, :])          # [T, B] into [N + B]
        r = torch.arange(N, device=device)
        step_of_row = torch.searchsorted(ends, r, right=True)                     # [N]
        self.packed_index = step_of_row * B + (r - offsets[step_of_row])          # [N] into [T * B]

    def rows(self, t: int) -> tuple[Tensor, int] | None:
        """The cell kernels' `rows` argument for step t (None: all rows)."""
        return (self.sizes, t) if self.packed else None

    def to_padded(self, x: Tensor, initial: Tensor | None = None) -> Tensor:
        """Per-step x ([N, W] packed or [T, B, W]) -> contiguous [T, B, W].

        Packed: position (t, b) of a row that does not take part in step t
        gets the row's carried value: its last step's value (forward) or
        `initial[b]` (reverse, not started yet; zeros when `initial` is None)."""
        if not self.packed:
            return x.contiguous()
        if initial is None:
            initial = x.new_zeros(self.B, x.shape[1])
        return torch.cat([x, initial]).index_select(0, self.carried.flatten()).view(self.T, self.B, -1)

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
        starts from, that is x of the step processed just before, or
        `initial` ([B, W]) for rows that take part for the first time."""
        padded = self.to_padded(x, initial)
        first = initial[None]
        if self.reverse:
            return torch.cat([padded[1:], first])
        return torch.cat([first, padded[:-1]])

    def previous(self, x: Tensor, initial: Tensor) -> Tensor:
        """previous_padded in the layer's per-step layout."""
        return self.to_packed(self.previous_padded(x, initial))


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
