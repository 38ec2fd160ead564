"""Every (case, provider) in turn, into result records.

A record is a plain dict (it goes to results.json as it is):
    case, shape, mode, dtype, device, provider,
    status        "ok", "skipped" (reason says why) or "error" (reason and
                  traceback say what was raised)
    warmup_ms     the untimed warm-up calls' times
    times_ms      every timed call's time
    median_ms     the figure of the case
    peak_memory_bytes  see timing.py (None where not measurable)
    rel_diff      for backends: ||out - out_nn|| / ||out_nn|| of one forward
                  output against nn.LSTM's (float64 norms), and
    rel_diff_bound, the gross-error bound it is flagged against.

A provider that raises is recorded as an error and the run goes on. With
`isolate`, the timing and memory of each provider run in a fresh process
(isolated.py); the output check stays in this one.
"""

from __future__ import annotations

import traceback
from typing import Iterator

import torch

from .cases import BASELINE, Case, skip_reason
from .isolated import measure_in_subprocess
from .timing import Budget, measure, peak_memory
from .workloads import build

# Bounds of the forward-output check, by dtype: flags for gross errors (a
# wrong result timed), not accuracy tests (tests/ hold those). bf16 and fp16
# keep 8 and 11 significant bits, and both sides round on their own paths.
_REL_DIFF_BOUNDS = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}
# fp32 on a GPU where cuDNN may use TF32 (10 explicit mantissa bits, as fp16).
_TF32_BOUND = 1e-2


def rel_diff_bound(case: Case) -> float:
    if case.dtype == torch.float32 and case.device == "cuda" and torch.backends.cudnn.allow_tf32:
        return _TF32_BOUND
    return _REL_DIFF_BOUNDS[case.dtype]


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.double(), expected.double()
    return float((a - e).norm() / e.norm().clamp_min(torch.finfo(torch.float64).tiny))


def _release(device: str) -> None:
    """Hand the freed workload's cached GPU memory back, so the next provider starts alike."""
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_case(case: Case, providers: list[str], budget: Budget, isolate: bool = False,
             threads: int | None = None) -> Iterator[dict]:
    """One record per provider (nn.LSTM first, so its output is the check's reference);
    `threads` is passed to the isolated processes (this one's is the caller's to set)."""
    reference = None
    for provider in providers:
        record = {"case": case.id, "shape": case.shape.name, "mode": case.mode,
                  "dtype": case.dtype_name, "device": case.device, "provider": provider}
        reason = skip_reason(case, provider)
        if reason is not None:
            record.update(status="skipped", reason=reason)
            yield record
            continue
        workload = None
        try:
            workload = build(case, provider)
            output = workload.forward_output()
            if provider == BASELINE:
                reference = output
            elif reference is not None:
                record.update(rel_diff=relative_difference(output, reference),
                              rel_diff_bound=rel_diff_bound(case))
            del output
            if isolate:
                workload = None
                _release(case.device)
                measured, peak = measure_in_subprocess(case, provider, budget, threads)
            else:
                measured = measure(workload, case.device, budget)
                peak = peak_memory(workload, case.device)
            record.update(status="ok", median_ms=measured.median_s * 1e3,
                          warmup_ms=[t * 1e3 for t in measured.warmup_s],
                          times_ms=[t * 1e3 for t in measured.times_s],
                          peak_memory_bytes=peak)
        except Exception as exc:  # recorded in the results and the exit status, not dropped
            record.update(status="error", reason=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc())
        finally:
            del workload
            _release(case.device)
        yield record

