"""The layer plan, read from Python: where every step of one layer and
direction lives, for the backends written in Python (reference.py and the
Triton kernels).

The plan is built once, in C++ (csrc/include/fusedlstm/layer_plan.h), and
reaches Python as the op fusedlstm::layer_plan: an int64 [T, 4] CPU table
with one entry per step in processing order (entry k is step k forward,
step T - 1 - k reverse), columns

    offset       first row of the step (per-step tensors viewed as [rows, *])
    rows         rows taking part in the step (batch_sizes[t], or B)
    continuing   rows b < continuing continue from entry k - 1; the others
                 start from h0[b] / c0[b] (0 for entry 0)
    prev_offset  first row of entry k - 1 (0 for entry 0)

A contract change touches the builder and the readers (this module, the
C++ host loops, the Triton kernels' plan_entry), not a second definition.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from . import _extension

OFFSET, ROWS, CONTINUING, PREV_OFFSET = range(4)  # the table's columns


class StepPlan(NamedTuple):
    """One entry of the plan (one row of the table)."""

    offset: int
    rows: int
    continuing: int
    prev_offset: int


def layer_plan(batch_sizes: Tensor | None, T: int, B: int, reverse: bool) -> Tensor:
    """The plan's table, int64 [T, 4] on the CPU. batch_sizes: int64 [T] on
    the CPU (packed input, checked by the op) or None (dense, B rows a step)."""
    if not _extension.loaded():
        raise RuntimeError(f"fusedlstm: the layer plan is built by fusedlstm._C, which is not "
                           f"loaded: {_extension.load_error}")
    return torch.ops.fusedlstm.layer_plan(batch_sizes, T, B, reverse)


def entries(batch_sizes: Tensor | None, T: int, B: int, reverse: bool) -> list[StepPlan]:
    """The plan as Python numbers, entry k at [k] (reads the table on the host)."""
    return [StepPlan(*row) for row in layer_plan(batch_sizes, T, B, reverse).tolist()]


def processing_order(T: int, reverse: bool) -> range:
    """The step processed k-th, at [k]: the steps of the plan's entries."""
    return range(T - 1, -1, -1) if reverse else range(T)


def on_device(table: Tensor, device: torch.device) -> Tensor:
    """The table on `device`, for kernels that read it there. To a GPU it is
    copied from pinned memory with non_blocking=True, so the host does not
    wait for the copy. While tracing (fake tensors, which cannot be pinned)
    the traced graph holds a plain copy."""
    if device.type == "cpu":
        return table
    if not is_fake(table):
        table = table.pin_memory()
    return table.to(device, non_blocking=True)
