"""How the launchers call their kernels.

`wrap_triton(kernel)[grid](...)` is torch.library.wrap_triton, which lets
torch.compile and make_fx trace the launch inside a triton_op. Under the
Triton interpreter (TRITON_INTERPRET=1), @triton.jit makes an
InterpretedFunction, which wrap_triton rejects in torch releases before
pytorch/pytorch#185597 (torch 2.11 among them): it is launched directly
there, as newer torch does itself. The name stays `wrap_triton` because
torch finds a triton_op's kernels by looking for calls of that name.

Every launch runs with the device of its CUDA tensor arguments current, as
the C++ ops' device guard does: Triton compiles for and launches on the
current device and its stream, so tensors of cuda:1 launched while cuda:0
is current would be handed to the wrong GPU. For CPU tensors (the
interpreter) and fake ones (while tracing; torch.compile's generated code
sets the device itself) there is nothing to guard.

Within `capture_launches()`, launches are recorded instead of run: what each
launcher passes its kernel, for compiling the kernels ahead of time for a
GPU that is not there (budget.py).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton as _torch_wrap_triton

try:
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # a Triton without the interpreter
    InterpretedFunction = ()


def is_interpreted(kernel) -> bool:
    return isinstance(kernel, InterpretedFunction)


_captured: list | None = None  # the list of the innermost capture_launches(), if any


@contextlib.contextmanager
def capture_launches() -> Iterator[list[tuple[Any, tuple, dict]]]:
    """Within it, wrap_triton(kernel)[grid](*args, **kwargs) runs nothing and
    appends (kernel, args, kwargs) to the list it yields."""
    global _captured
    outer, _captured = _captured, []
    try:
        yield _captured
    finally:
        _captured = outer


class _Recorder:
    def __init__(self, kernel, into: list):
        self.kernel, self.into = kernel, into

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.into.append((self.kernel, args, kwargs))


_PLAIN = (torch.Tensor, torch.nn.Parameter)  # real tensors, told apart without is_fake's cost


def launch_device(values) -> torch.device | None:
    """The device a launch with these arguments must run on: that of its first
    CUDA tensor, or None (CPU tensors, fake tensors: no kernel runs on a GPU)."""
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_cuda:
            return value.device if type(value) in _PLAIN or not is_fake(value) else None
    return None


def device_guard(values) -> contextlib.AbstractContextManager:
    """torch.cuda.device(launch_device(values)), or nothing to do."""
    device = launch_device(values)
    return torch.cuda.device(device) if device is not None else contextlib.nullcontext()


class _Guarded:
    def __init__(self, launcher):
        self.launcher = launcher

    def __getitem__(self, grid):
        run = self.launcher[grid]

        def launch(*args, **kwargs):
            with device_guard((*args, *kwargs.values())):
                return run(*args, **kwargs)
        return launch


def wrap_triton(kernel):
    if _captured is not None:
        return _Recorder(kernel, _captured)
    return _Guarded(kernel if is_interpreted(kernel) else _torch_wrap_triton(kernel))


def math_dtype(dtype: torch.dtype):
    """The type the kernels compute in: float64 for float64 data, else float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
              torch.float64: tl.float64}


def dot_dtype(dtype: torch.dtype, kernel):
    """The operand type of tl.dot for `dtype` data: the data's own, except
    bfloat16 under the interpreter, whose tl.dot multiplies the raw bits of
    bfloat16 operands (Triton 3.8, seen on 16x16 products: errors ~1e10).
    There the operands, already rounded to bfloat16, are widened to float32:
    the same values, accumulated in float32 as on the GPU."""
    if dtype == torch.bfloat16 and is_interpreted(kernel):
        return tl.float32
    return _TL_DTYPES[dtype]
