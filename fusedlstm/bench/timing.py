"""Timing and peak memory of one workload.

Each timed call is preceded by the workload's untimed prepare(). CPU: the
host clock (time.perf_counter) around the call. CUDA: the device is
synchronised after prepare(), and CUDA events recorded around the call give
its time on the stream (the end event is waited for). Warm-up calls come
first and are reported apart; the figure of a case is the median of the
timed calls.

Peak memory is taken in one more call of its own, after the timed ones, so
that measuring it cannot disturb the times:
  CUDA  torch.cuda.max_memory_allocated() during the call minus
        memory_allocated() before it (tensors only; the caching allocator's
        reserve is not counted).
  CPU   the peak resident set size during the call (the kernel's VmHWM,
        reset to the current RSS through /proc/self/clear_refs first) minus
        the RSS before it. First glibc's malloc_trim(0) hands the heap's free
        pages back to the system, so that what the call allocates shows as
        newly resident pages instead of being served unseen from memory freed
        by earlier calls (without it, most calls read 0 after warm-up).
        Limits: page granularity; memory a library keeps in a cache of its
        own is not seen; any other thread of the process counts too; without
        glibc the trim is skipped and the figure can under-count. Where
        /proc/self/clear_refs cannot be written (not Linux, or refused), the
        peak is not reported (None) rather than guessed.
"""

from __future__ import annotations

import ctypes
import functools
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .workloads import Workload

CPU_MEMORY_METHOD = ("peak RSS during one call minus RSS before it (free heap pages trimmed and "
                     "VmHWM reset first)")
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated() during one call minus memory_allocated() before it"


@dataclass(frozen=True)
class Budget:
    """How many calls: `warmup` untimed calls, then enough timed calls to
    take about `seconds` (by the fastest warm-up call), at least
    min_repeats and at most max_repeats."""

    warmup: int = 2
    seconds: float = 1.0
    min_repeats: int = 5
    max_repeats: int = 200

    def __post_init__(self):
        if self.warmup < 0 or self.min_repeats < 1 or self.max_repeats < self.min_repeats or self.seconds < 0:
            raise ValueError(f"invalid budget {self}: need warmup >= 0, seconds >= 0 and "
                             f"1 <= min_repeats <= max_repeats")

    @classmethod
    def fixed(cls, repeats: int, warmup: int = 2) -> "Budget":
        """Exactly `repeats` timed calls."""
        return cls(warmup=warmup, seconds=0.0, min_repeats=repeats, max_repeats=repeats)

    def repeats(self, warmup_s: list[float]) -> int:
        """Timed calls to make after warm-up calls that took `warmup_s`."""
        if not warmup_s:
            return self.min_repeats
        wanted = math.ceil(self.seconds / max(min(warmup_s), 1e-9))
        return min(self.max_repeats, max(self.min_repeats, wanted))


@dataclass
class Measurement:
    warmup_s: list[float] = field(default_factory=list)
    times_s: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        ordered = sorted(self.times_s)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def set_tf32(allowed: bool) -> None:
    """Whether float32 on a GPU may use TF32 tensor-core math, for cuDNN (nn.LSTM)
    and cuBLAS (the fusedlstm backends' GEMMs) alike, so that float32 figures
    compare the same arithmetic."""
    torch.backends.cudnn.allow_tf32 = allowed
    torch.backends.cuda.matmul.allow_tf32 = allowed


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(workload: Workload, device: str) -> float:
    """Seconds of one call of workload.run, its prepare() untimed."""
    arg = workload.prepare()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = workload.run(arg)
        end.record()
        end.synchronize()
        del result
        return start.elapsed_time(end) / 1e3
    start = time.perf_counter()
    result = workload.run(arg)
    elapsed = time.perf_counter() - start
    del result  # freed after the clock stopped
    return elapsed


def warm_up(workload: Workload, device: str, budget: Budget) -> list[float]:
    return [time_call(workload, device) for _ in range(budget.warmup)]


def measure(workload: Workload, device: str, budget: Budget) -> Measurement:
    """Warm-up calls, then the timed ones (seconds each)."""
    warmup = warm_up(workload, device, budget)
    repeats = budget.repeats(warmup)
    return Measurement(warmup, [time_call(workload, device) for _ in range(repeats)])


# --- peak memory ---------------------------------------------------------------------------

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _status_bytes(name: str) -> int:
    match = re.search(rf"^{name}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {name} line")
    return int(match.group(1)) * 1024


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _trim_heap() -> None:
    """glibc's malloc_trim(0): return every arena's free pages to the system."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _reset_rss_peak() -> bool:
    """Set the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux 4.0+)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def cpu_peak_supported() -> bool:
    return _STATUS.exists() and _reset_rss_peak()


def peak_memory(workload: Workload, device: str) -> int | None:
    """Bytes by which one call of workload.run grew memory at its peak, or
    None where it cannot be measured (see the module docstring)."""
    arg = workload.prepare()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = workload.run(arg)
        torch.cuda.synchronize()
        del result
        return max(0, torch.cuda.max_memory_allocated() - base)
    _trim_heap()
    if not cpu_peak_supported():
        return None
    base = _status_bytes("VmRSS")
    result = workload.run(arg)
    peak = _status_bytes("VmHWM")
    del result
    return max(0, peak - base)


def memory_method(device: str) -> str:
    return CUDA_MEMORY_METHOD if torch.device(device).type == "cuda" else CPU_MEMORY_METHOD
