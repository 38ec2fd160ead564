"""fusedlstm::lstm_cell_step, the inference-only whole cell step (one kernel
launch on CUDA, csrc/cuda/lstm_step_cuda.cuh), and FusedLSTMCell's use of
it: against nn.LSTMCell and the CPU op, opcheck, the refusal to
differentiate, when FusedLSTMCell takes it, and the kernels' sm_90 build
(registers, no spills; nvcc, no GPU). The kernel's per-thread code also runs
on the host in tests/cpp/test_cuda_on_host.cu."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from fusedlstm import FusedLSTMCell, _extension, backends, checks, ops
from lstm_testing import assert_error_at_most_twice_pytorchs, device_params, skip_unless_usable

ROOT = Path(__file__).resolve().parents[1]
needs_cpp = pytest.mark.skipif(ops.cpp_step is None, reason="fusedlstm._C is not built")
HALF_TYPES = [pytest.param(torch.float16, id="f16"), pytest.param(torch.bfloat16, id="bf16")]


def step_args(B, I, H, dtype=torch.float64, device="cpu", bias=True, seed=0):
    """(x, h, c, w_ih, w_hh, b_ih, b_hh) of nn.LSTMCell(I, H)'s initialisation."""
    g = torch.Generator().manual_seed(seed)
    bound = H ** -0.5

    def uniform(*shape):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * bound).to(device, dtype)

    x, h, c = (torch.randn(B, n, generator=g, dtype=torch.float64).to(device, dtype) for n in (I, H, H))
    biases = (uniform(4 * H), uniform(4 * H)) if bias else (None, None)
    return x, h, c, uniform(4 * H, I), uniform(4 * H, H), *biases


def lstm_cell(args):
    """nn.LSTMCell on the same weights and state -> (h', c')."""
    x, h, c, w_ih, w_hh, b_ih, b_hh = args
    cell = nn.LSTMCell(x.shape[1], h.shape[1], bias=b_ih is not None, device=x.device, dtype=x.dtype)
    with torch.no_grad():
        for name, value in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), (w_ih, w_hh, b_ih, b_hh)):
            if value is not None:
                getattr(cell, name).copy_(value)
        return cell(x, (h, c))


SIZES = [(1, 64, 32), (3, 5, 13), (8, 16, 24), (13, 7, 16)]  # rows per pass 1 and 8, several passes


@needs_cpp
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("B,I,H", SIZES, ids=[f"B{b}-I{i}-H{h}" for b, i, h in SIZES])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_step_matches_lstm_cell(device, dtype, B, I, H, bias):
    skip_unless_usable(device, device)
    args = step_args(B, I, H, dtype, device, bias)
    h_next, c_next = ops.cpp_step(*args)
    expected = lstm_cell(args)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_next, expected[0], **tol)
    torch.testing.assert_close(c_next, expected[1], **tol)


@needs_cpp
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("B,I,H", [(1, 64, 256), (5, 5, 13)], ids=["B1-I64-H256", "B5-I5-H13"])
def test_gpu_half_precision_step_within_twice_pytorchs_error(dtype, B, I, H):
    skip_unless_usable("cuda", "cuda")
    args = step_args(B, I, H, dtype, "cuda")
    exact = lstm_cell(tuple(t.double() if t is not None else None for t in args))
    ours = dict(zip(("h", "c"), ops.cpp_step(*args)))
    theirs = dict(zip(("h", "c"), lstm_cell(args)))
    assert_error_at_most_twice_pytorchs(ours, theirs, dict(zip(("h", "c"), exact)), dtype)


@needs_cpp
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_step_opcheck(device, bias):
    skip_unless_usable(device, device)
    for B, I, H in ((1, 8, 4), (3, 5, 13)):
        torch.library.opcheck(torch.ops.fusedlstm.lstm_cell_step.default,
                              step_args(B, I, H, torch.float64, device, bias))


@needs_cpp
def test_step_refuses_to_be_differentiated():
    x, *rest = step_args(2, 3, 4)
    h_next, _ = ops.cpp_step(x.requires_grad_(), *rest)
    with pytest.raises(RuntimeError, match="lstm_cell_step is inference-only and cannot be differentiated"):
        h_next.sum().backward()


BAD_STEP_ARGUMENTS = [
    ("w_hh", torch.zeros(16, 5, dtype=torch.float64), r"w_hh must have shape \[16, 4\], got \[16, 5\]"),
    ("w_hh", torch.zeros(15, 4, dtype=torch.float64), r"w_hh must be \[4H, H\] with H > 0, got shape \[15, 4\]"),
    ("x", torch.zeros(2, 5, dtype=torch.float64), r"x must have shape \[2, 3\], got \[2, 5\]"),
    ("h", torch.zeros(3, 4, dtype=torch.float64), r"h must have shape \[2, 4\], got \[3, 4\]"),
    ("b_ih", torch.zeros(15, dtype=torch.float64), r"b_ih must have shape \[16\], got \[15\]"),
    ("b_hh", torch.zeros(1, 16, dtype=torch.float64), "b_hh must be a 1-D tensor, got 2-D"),
    ("c", torch.zeros(2, 4), "c must have dtype torch.float64 like x, got torch.float32"),
    ("x", torch.zeros(2, 3, dtype=torch.int64), "x must be float32, float64, float16 or bfloat16, got torch.int64"),
]


@needs_cpp
@pytest.mark.parametrize("name,bad,match", BAD_STEP_ARGUMENTS, ids=lambda v: v if isinstance(v, str) else "")
def test_step_rejects_bad_arguments_as_the_python_checker_does(name, bad, match):
    """The C++ op (checks.h), its fake rule and fusedlstm.checks give one message."""
    args = dict(zip(("x", "h", "c", "w_ih", "w_hh", "b_ih", "b_hh"), step_args(2, 3, 4))) | {name: bad}
    with pytest.raises(RuntimeError, match=match) as cpp:
        ops.cpp_step(**args)
    with pytest.raises(RuntimeError) as python:
        checks.check_cell_step_args(**args)
    with FakeTensorMode() as mode, pytest.raises(RuntimeError) as fake:
        ops.cpp_step(**{k: mode.from_tensor(v) if v is not None else None for k, v in args.items()})
    first_line = str(cpp.value).splitlines()[0]
    assert str(python.value) == first_line
    assert str(fake.value).splitlines()[0] == first_line


def test_step_has_a_cuda_kernel_wherever_the_cuda_kernels_are_built():
    if not _extension.has_cuda_kernels():
        pytest.skip("fusedlstm._C was built without CUDA kernels")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fusedlstm::lstm_cell_step", "CUDA")


# --- when FusedLSTMCell takes the one-launch step ---------------------------------------------

class Recorder:
    """A stand-in whole-step op that records its calls and runs the CPU op."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        return ops.cpp_step(*args)


@needs_cpp
@pytest.mark.parametrize("batch,grad,used", [(1, False, True), (8, False, True), (9, False, False),
                                             (1, True, False)])
def test_cell_takes_the_whole_step_without_gradients_at_small_batch(batch, grad, used):
    recorder = Recorder()
    backend = backends.Backend("with-step", lambda device_type: None, lambda: ops.cpp, step=lambda: recorder)
    x, h, c, w_ih, w_hh, b_ih, b_hh = step_args(batch, 6, 5)
    with torch.set_grad_enabled(grad):
        w_ih.requires_grad_()
        h_next, c_next = FusedLSTMCell._step(backend, x, h, c, w_ih, w_hh, b_ih, b_hh)
    assert recorder.calls == int(used)
    assert h_next.requires_grad == grad
    expected = lstm_cell((x, h, c, w_ih.detach(), w_hh, b_ih, b_hh))
    torch.testing.assert_close(h_next, expected[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(c_next, expected[1], rtol=1e-10, atol=1e-10)


@needs_cpp
@pytest.mark.cuda
def test_gpu_cell_generation_runs_the_step_kernel(monkeypatch):
    skip_unless_usable("cuda", "cuda")
    recorder = Recorder()
    monkeypatch.setattr(ops, "cpp_step", recorder)  # the "cuda" backend's step reads it at call time
    torch.manual_seed(0)
    cell = FusedLSTMCell(64, 256, device="cuda", backend="cuda")
    plain = cell.to_lstm_cell()
    x, state = torch.randn(1, 64, device="cuda"), (torch.randn(1, 256, device="cuda"),) * 2
    with torch.no_grad():
        ours, theirs = cell(x, state), plain(x, state)
    assert recorder.calls == 1
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    cell(x, state)[0].sum().backward()  # with gradients: the differentiable path
    assert recorder.calls == 1 and cell.weight_hh.grad is not None


# --- the kernels as built for the H200 ---------------------------------------------------------

def nvcc_command():
    nvcc = shutil.which("nvcc")
    if nvcc is None or torch.version.cuda is None:
        pytest.skip("no nvcc, or a CPU-only torch: the CUDA kernels are not built here")
    from torch.utils.cpp_extension import include_paths
    includes = [*include_paths(), str(ROOT / "csrc"), str(ROOT / "csrc" / "include")]
    try:
        import nvidia  # the CUDA headers of the pip wheels (cusparse.h, ...), as setup.py adds
        includes += [str(p) for base in nvidia.__path__ for p in Path(base).glob("*/include")]
    except ImportError:
        pass
    return [nvcc, "-std=c++20", "-cubin", "-arch=sm_90", "-Xptxas", "-v",
            *(f"-I{d}" for d in includes)]


@pytest.mark.slow
def test_step_kernels_compile_for_sm90_without_spills(tmp_path):
    """Every variant of the step kernel (4 dtypes x vector or scalar columns x 1
    or 8 rows per pass) compiles for sm_90 with no spills to local memory."""
    result = subprocess.run([*nvcc_command(), "-o", str(tmp_path / "step.cubin"),
                             str(ROOT / "csrc" / "cuda" / "lstm_step_cuda.cu")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = re.findall(r"Compiling entry function '(\w*_lstm_cell_step_kernel\w*)' for 'sm_90'.*?"
                         r"(\d+) bytes spill stores, (\d+) bytes spill loads.*?Used (\d+) registers",
                         result.stderr, re.S)
    assert len(reports) == 16, result.stderr[-3000:]
    for name, stores, loads, registers in reports:
        print(f"{name}: {registers} registers, spills {stores}/{loads} bytes")
        assert (int(stores), int(loads)) == (0, 0), name
