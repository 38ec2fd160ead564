"""Options and parametrisation of the pytest-benchmark suite.

The cases are fusedlstm.bench's, the same ones `fusedlstm bench` runs:

    pytest benchmarks/ --benchmark-only                       every default shape, float32, CPU and GPU
    pytest benchmarks/ --benchmark-only --bench-shapes char,small-b1 --bench-modes forward,forward+backward
    pytest benchmarks/ --benchmark-only --bench-devices cuda --bench-dtypes float32,bfloat16

GPU cases are collected everywhere and skip, with the reason, where no GPU is
visible; nothing here queries the GPU at collection.
"""

from __future__ import annotations

import pytest

from fusedlstm.bench import cases
from fusedlstm.bench.timing import Budget


def pytest_addoption(parser):
    group = parser.getgroup("fusedlstm bench", "fusedlstm benchmark cases")
    group.addoption("--bench-devices", default=",".join(cases.DEVICES),
                    help="comma-separated: cpu, cuda (default both; cuda skips without a GPU)")
    group.addoption("--bench-dtypes", default="float32", help="comma-separated: float32, bfloat16, float16")
    group.addoption("--bench-shapes", default=None,
                    help=f"comma-separated (default {','.join(cases.default_shapes())})")
    group.addoption("--bench-modes", default=None, help=f"comma-separated (default {','.join(cases.MODES)})")
    group.addoption("--bench-backends", default=None,
                    help="comma-separated fusedlstm backends (default: every usable one per device, "
                         f"except {', '.join(cases.OPT_IN_BACKENDS)}); nn.LSTM always runs")
    group.addoption("--bench-budget", type=float, default=Budget.seconds,
                    help=f"seconds of timed calls to aim for per benchmark (default {Budget.seconds})")


def _names(config, option, allowed, what):
    try:
        return cases.parse_names(config.getoption(option), list(allowed), what)
    except ValueError as exc:
        raise pytest.UsageError(f"{option}: {exc}") from None


def pytest_generate_tests(metafunc):
    if not {"case", "provider"} <= set(metafunc.fixturenames):
        return
    config = metafunc.config
    from fusedlstm import backends

    devices = _names(config, "--bench-devices", cases.DEVICES, "device")
    dtypes = _names(config, "--bench-dtypes", cases.DTYPES, "dtype")
    shapes = _names(config, "--bench-shapes", cases.SHAPES, "shape")
    modes = _names(config, "--bench-modes", cases.MODES, "mode")
    chosen = _names(config, "--bench-backends", backends.BACKENDS, "backend")
    params = []
    for device in devices:
        marks = [pytest.mark.cuda] if device == "cuda" else []
        for case in cases.select(device, dtypes, shapes, modes):
            for provider in cases.providers(device, chosen):
                params.append(pytest.param(case, provider, id=f"{case.id}-{provider}", marks=marks))
    metafunc.parametrize("case,provider", params)


@pytest.fixture
def budget(request) -> Budget:
    return Budget(seconds=request.config.getoption("--bench-budget"))
