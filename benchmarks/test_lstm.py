"""nn.LSTM against every usable fusedlstm backend, one benchmark per
(shape, mode, dtype, device, provider); the cases, the timed call and the
repetition count are fusedlstm.bench's (see conftest.py for the options).

pytest-benchmark times with the host clock; on a GPU the timed call ends
with a device synchronisation, and the untimed setup (prepare) ends with one
too, so the figure is the call's own time. Each group holds one case's
providers, to read side by side. Peak memory of one call goes to extra_info.
"""

from __future__ import annotations

import pytest

from fusedlstm.bench import cases, timing, workloads


def test_lstm(benchmark, case, provider, budget):
    reason = cases.skip_reason(case, provider)
    if reason is not None:
        pytest.skip(reason)
    workload = workloads.build(case, provider)
    warmup = timing.warm_up(workload, case.device, budget)
    rounds = budget.repeats(warmup)

    def setup():
        arg = workload.prepare()
        timing.synchronize(case.device)
        return (arg,), {}

    def call(arg):
        result = workload.run(arg)
        timing.synchronize(case.device)
        return result

    benchmark.group = case.id
    benchmark.extra_info.update(shape=case.shape.dims(), mode=case.mode, dtype=case.dtype_name,
                                device=case.device, provider=provider)
    benchmark.pedantic(call, setup=setup, rounds=rounds, iterations=1)
    benchmark.extra_info["peak_memory_bytes"] = timing.peak_memory(workload, case.device)
    benchmark.extra_info["peak_memory_method"] = timing.memory_method(case.device)
