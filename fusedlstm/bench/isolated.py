"""Timing one (case, provider) in a fresh Python process: `fusedlstm bench --isolate`.

On the CPU the providers' times depend on the process they share: glibc hands
large freed blocks back to the kernel, and the next allocation faults them in
again, so one provider's allocations can put page faults into the other's
timed calls. On the 2-core development machine (2 threads, 2026-11-28) the
`char` shape's forward+backward took 113.1 ms with nn.LSTM and 113.3 ms with
the `cpu` backend, each alone in a process, against 112.6 and 119.2 ms timed
one after the other in one process (benchmarks/RESULTS.md). In isolation each
provider runs the way a user's process that holds one LSTM runs it.

    python -m fusedlstm.bench.isolated '<spec JSON>'

prints one JSON line: warmup_s, times_s, peak_memory_bytes. The spec names the
case (shape, mode, dtype, device), the provider, the budget and the threads.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import torch

from .cases import Case
from .timing import Budget, Measurement


def spec(case: Case, provider: str, budget: Budget, threads: int | None) -> dict:
    """What the child needs to rebuild and time the workload, with this process's TF32 setting."""
    return {"shape": case.shape.name, "mode": case.mode, "dtype": case.dtype_name, "device": case.device,
            "provider": provider, "budget": dataclasses.asdict(budget), "threads": threads,
            "tf32": torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32}


def measure_in_subprocess(case: Case, provider: str, budget: Budget,
                          threads: int | None) -> tuple[Measurement, int | None]:
    """(the timings, the peak memory growth in bytes) of `provider` on `case`, measured
    in a new interpreter that builds the same workload (same seeds) and times it."""
    command = [sys.executable, "-m", "fusedlstm.bench.isolated", json.dumps(spec(case, provider, budget, threads))]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the isolated timing process of {case.id} / {provider} exited with status "
                           f"{done.returncode}:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Measurement(result["warmup_s"], result["times_s"]), result["peak_memory_bytes"]


def main(argv: list[str]) -> int:
    from .cases import select
    from .timing import measure, peak_memory, set_tf32
    from .workloads import build

    if len(argv) != 1:
        sys.exit("usage: python -m fusedlstm.bench.isolated '<spec JSON>' (see fusedlstm bench --isolate)")
    given = json.loads(argv[0])
    if given["threads"]:
        torch.set_num_threads(given["threads"])
    if given["device"] == "cuda":
        set_tf32(given["tf32"])
    (case,) = select(given["device"], [given["dtype"]], [given["shape"]], [given["mode"]])
    workload = build(case, given["provider"])
    measured = measure(workload, case.device, Budget(**given["budget"]))
    print(json.dumps({"warmup_s": measured.warmup_s, "times_s": measured.times_s,
                      "peak_memory_bytes": peak_memory(workload, case.device)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
