"""Which kernels one forward+backward launches, per provider: a torch.profiler
look at a benchmark case, to explain a time rather than to measure one.

    python benchmarks/profile_kernels.py --shape small-h128 --dtype float32 --device cuda

For each provider: the time of one forward+backward call as `fusedlstm bench`
takes it (fusedlstm.bench.timing.measure: median of `--calls` unprofiled
calls) beside the time its kernels keep the device busy (when far less, the
host's launches are the bottleneck); then the kernels (device
time, or CPU ops without a GPU) of `--calls` profiled calls after one warm-up
call, as launches per call and per step (T), average time per launch and
share of the device time, the top `--top` by total time. The bench's shapes,
weights and inputs (fusedlstm.bench.workloads), so a row of the bench table
can be taken apart: benchmarks/device_check.sh runs it on small-h128, where the
CUDA backend takes 84 ms in float32, more than at H=256 (small-b8; see
benchmarks/RESULTS.md), and on small-b8 and fastrnns beside it.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from fusedlstm.bench.cases import BASELINE, DTYPES, SHAPES, Case
from fusedlstm.bench.timing import Budget, measure, set_tf32, synchronize
from fusedlstm.bench.workloads import build


def kernel_table(case: Case, provider: str, calls: int) -> tuple[list[tuple[str, int, float]], float, float]:
    """([(name, launches, total µs)] sorted by total time, total µs, µs per call)
    of `calls` profiled forward+backward calls of `provider` on `case`; the time
    per call is the median of `calls` unprofiled ones after one warm-up call."""
    workload = build(case, provider)
    on_gpu = case.device == "cuda"
    wall = measure(workload, case.device, Budget.fixed(calls, warmup=1)).median_s * 1e6
    activities = [ProfilerActivity.CUDA] if on_gpu else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(calls):
            workload.run(workload.prepare())
        synchronize(case.device)
    launches: dict[str, int] = defaultdict(int)
    micros: dict[str, float] = defaultdict(float)
    for event in prof.events():
        device_event = event.device_type == torch.autograd.DeviceType.CUDA
        if device_event != on_gpu:
            continue
        launches[event.name] += 1
        micros[event.name] += event.device_time_total if on_gpu else event.self_cpu_time_total
    rows = sorted(((name, launches[name], micros[name]) for name in launches), key=lambda r: -r[2])
    return rows, sum(micros.values()), wall


def print_table(case: Case, provider: str, calls: int, top: int) -> None:
    rows, total, wall = kernel_table(case, provider, calls)
    steps = case.shape.steps
    what = "kernels" if case.device == "cuda" else "CPU ops (self time)"
    print(f"\n{provider} — {case.id} ({case.shape.dims()}), {calls} calls: "
          f"{wall / 1000:.2f} ms per call (wall), {total / calls / 1000:.2f} ms of {what}, "
          f"{sum(r[1] for r in rows) / calls:.0f} of them ({sum(r[1] for r in rows) / calls / steps:.1f} per step)")
    print(f"  {'per call':>8} {'per step':>8} {'µs each':>8} {'share':>6}  name")
    for name, count, micros in rows[:top]:
        print(f"  {count / calls:8.0f} {count / calls / steps:8.2f} {micros / count:8.2f} "
              f"{micros / total:6.1%}  {name[:100]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES), required=True,
                        help="a benchmark shape (repeatable)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--providers", nargs="+", default=[BASELINE, "cuda"],
                        help="nn.LSTM and/or fusedlstm backends (default: nn.LSTM cuda)")
    parser.add_argument("--calls", type=int, default=3, help="profiled calls (default 3)")
    parser.add_argument("--top", type=int, default=8, help="kernels listed per provider (default 8)")
    parser.add_argument("--tf32", choices=("off", "on"), default="off",
                        help="TF32 for cuDNN and cuBLAS alike, as in `fusedlstm bench` (default off)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to PyTorch")
    set_tf32(args.tf32 == "on")
    for name in args.shape:
        case = Case(SHAPES[name], "forward+backward", DTYPES[args.dtype], args.device)
        for provider in args.providers:
            print_table(case, provider, args.calls, args.top)


if __name__ == "__main__":
    main()
