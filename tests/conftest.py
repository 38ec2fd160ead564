"""Test setup for the whole run.

The Triton backend's tests run on machines without a GPU through Triton's
interpreter, which is switched on by TRITON_INTERPRET=1 and only counts if
it is set before fusedlstm.triton (and so its @triton.jit kernels) is first
imported; the package imports it lazily, at the first use of the "triton"
backend, which is after this file runs.

The rule, explicit so that a run says which Triton it tested:
  * TRITON_INTERPRET set in the environment: left as it is (TRITON_INTERPRET=0
    on a CPU-only machine skips the Triton tests for CPU tensors, with the
    reason; =1 on a GPU machine sends the CUDA tests through the interpreter).
  * otherwise, no usable CUDA GPU: TRITON_INTERPRET=1 for the run, so
    the Triton kernels are tested on CPU tensors (slow, hence small shapes).
  * otherwise: unset, so the GPU tests run the compiled kernels, which is
    what they are for; the interpreter would copy CUDA tensors to the host.
Asking torch whether a GPU is usable happens here, in the test setup, never
at `import fusedlstm`.
"""

import os

import pytest
import torch
from hypothesis import settings

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# The property tests' example counts (tests/test_properties.py): "ci" (the default) fits
# the CI machine; `--hypothesis-profile=long` is a fuzz run of tens of minutes.
settings.register_profile("ci", max_examples=40, deadline=None)
settings.register_profile("long", max_examples=1500, deadline=None)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _one_thread_under_the_interpreter(request):
    """Tests of the Triton backend on CPU tensors run torch single-threaded.

    The interpreter runs each kernel as Python between torch's tiny GEMMs,
    and torch's OpenMP workers keep spinning after each GEMM, competing with
    it for the cores: one layer forward+backward (T=6, B=3, H=13, float64,
    per-step path) took 0.89 s with torch's default 2 threads and 0.26 s
    with OMP_NUM_THREADS=1 (2-core machine under load, 2026-11-28)."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    uses_triton = params.get("backend") == "triton" or request.module.__name__ == "test_triton"
    if not (uses_triton and os.environ.get("TRITON_INTERPRET") == "1"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --- runs under a time limit (benchmarks/device_check.sh) --------------------------------------

def pytest_collection_modifyitems(config, items):
    """Tests marked `slow` run first. Under pytest-xdist a long test that starts
    last decides when the run ends, and under a time limit (benchmarks/
    device_check.sh) it is cut off: the torch.compile tests, collected last, take
    the longest."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: order kept otherwise


_TEST_LOG = None  # FUSEDLSTM_TEST_LOG, in the process that reports (not in pytest-xdist's workers)


def pytest_configure(config):
    global _TEST_LOG
    if not hasattr(config, "workerinput"):
        _TEST_LOG = os.environ.get("FUSEDLSTM_TEST_LOG")


def pytest_runtest_logreport(report):
    """With FUSEDLSTM_TEST_LOG=FILE, one line per test outcome is appended to FILE as
    the test ends, so that a run killed by a timeout still says what passed and failed
    (pytest's summary and junit.xml come only at the end)."""
    path = _TEST_LOG
    if not path or not (report.when == "call" or report.outcome != "passed"):
        return
    line = f"{report.outcome} {report.when} {report.duration:.1f}s {report.nodeid}"
    crash = getattr(report.longrepr, "reprcrash", None)
    if report.failed and crash is not None:
        line += " -- " + crash.message.replace("\n", " ")[:400]
    with open(path, "a") as log:
        log.write(line + "\n")
