"""Multi-process training through torch.distributed, as launched by torchrun.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without them (or with
WORLD_SIZE=1) everything here is a no-op for a single process. CPU runs use
the gloo backend, CUDA runs NCCL with one GPU per process (cuda:LOCAL_RANK).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .. import backends
from .errors import CharLMError


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum_(self, tensor: Tensor) -> Tensor:
        """In-place sum over processes (a float tensor on this process's device)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def cat(self, tensor: Tensor, dim: int) -> Tensor:
        """Every process's `tensor` (equal shapes), concatenated in rank order along `dim`."""
        if not self.active:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim)

    def gather_objects(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every process (small picklable objects)."""
        if not self.active:
            return [obj]
        objects = [None] * self.world
        dist.all_gather_object(objects, obj)
        return objects

    def from_main(self, obj):
        """Rank 0's `obj` on every process."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def resolve_device(choice: str) -> torch.device:
    """"auto" -> cuda when a GPU is visible, else cpu; checks that cuda is usable."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise CharLMError("--device cuda was asked for, but no CUDA GPU is visible to PyTorch")
    return torch.device(choice)


def check_backend(name: str, device: torch.device) -> None:
    """CharLMError unless the FusedLSTM backend `name` (or FUSEDLSTM_BACKEND for "auto")
    can run on `device` here."""
    try:
        setting = backends.module_setting(name)
    except ValueError as error:
        raise CharLMError(f"{error} (--backend or {backends.ENV_VAR})") from None
    reason = None if setting == backends.AUTO else backends.BACKENDS[setting].unavailable(device.type)
    if reason is not None:
        raise CharLMError(f"backend {setting!r} cannot run on {device.type} here: {reason}; pass "
                          f"--backend with one that can: {', '.join(backends.available_backends(device))}")


def start(device_choice: str) -> tuple[Group, torch.device]:
    """Join the process group torchrun prepared (if any); this process's device."""
    device = resolve_device(device_choice)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Group(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise CharLMError(f"process {rank} needs GPU {local_rank}, but only "
                              f"{torch.cuda.device_count()} are visible: lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return Group(rank, world), device


def finish(group: Group) -> None:
    if group.active and dist.is_initialized():
        # Every process is past its last collective before any tears its
        # connections down. Without it, one rank of the 2-process gloo test
        # once aborted at the end ("terminate called without an active
        # exception") in a full-suite run on a 2-core machine; 20 runs of the
        # test alone did not reproduce it.
        dist.barrier()
        dist.destroy_process_group()
