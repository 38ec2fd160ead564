"""Backends: which implementation of the op contract runs for which tensors.

    "cpu"        C++ kernels, CPU tensors
    "cuda"       CUDA C++ kernels, CUDA tensors (when compiled in)
    "triton"     Triton kernels (fusedlstm.triton), CUDA tensors when triton is
                 importable; CPU tensors too under the Triton interpreter
                 (TRITON_INTERPRET=1 set before fusedlstm.triton is imported)
    "reference"  plain PyTorch (fusedlstm.reference), any device
    "auto"       "cpu" for CPU tensors; for CUDA tensors, the backend that the
                 recorded GPU runs show fastest for the same work (op, GPU
                 architecture, dtype, sizes, batch, packed or not), else
                 "cuda", "triton", "reference" in that order (fusedlstm.choice)

FUSEDLSTM_BACKEND, when set, replaces "auto" for modules created afterwards.
Meta tensors (shapes only) run through the ops' fake rules whatever the backend.
Each backend offers `cell(gates, c_prev) -> (h, c)` and
`layer(x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse) -> (output, h_n, c_n)`,
both differentiable, and says which code its layer runs for given sizes
(`layer_path`). The "cuda" backend also offers `step`, a whole inference step
in one kernel launch (fusedlstm::lstm_cell_step), which FusedLSTMCell runs
without gradients at batch <= STEP_MAX_BATCH.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Callable

import torch

from . import _extension, choice, choice_table, ops, reference
from .precision import constant_when_traced, float32_matmul_precision

AUTO = "auto"
ENV_VAR = "FUSEDLSTM_BACKEND"

# The largest batch of a backend's `step`: the CUDA kernel's rows per pass
# over the weights (kStepMaxRows, csrc/cuda/lstm_step_cuda.cuh); larger
# batches would read the weights again, where cuBLAS GEMMs read them once.
STEP_MAX_BATCH = 8

def _one_path(H: int, P: int, dtype: torch.dtype) -> str:
    return "per-step"


@dataclass(frozen=True)
class Backend:
    name: str
    # device type -> None when usable there, else the reason it is not
    unavailable: Callable[[str], str | None]
    implementation: Callable[[], object]
    # (H, P, dtype) -> the code the layer op runs: "per-step" (a GEMM and a
    # fused cell kernel per step) or, for Triton, "persistent" / "streamed"
    # (one launch per layer); a backend with several layer kernels says here
    # which one serves which sizes, and the measured choice keeps them apart.
    layer_path: Callable[[int, int, torch.dtype], str] = _one_path
    # () -> the inference-only whole-step op (x, h, c, w_ih, w_hh, b_ih, b_hh)
    # -> (h', c'), or None for a backend without one
    step: Callable[[], Callable] | None = None

    def cell(self, gates, c_prev):
        return self.implementation().cell(gates, c_prev)

    def layer(self, x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse):
        return self.implementation().layer(x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse)


def _cpu_unavailable(device_type: str) -> str | None:
    if device_type != "cpu":
        return f"the cpu backend runs on CPU tensors, not {device_type}"
    return _extension.load_error


def _cuda_unavailable(device_type: str) -> str | None:
    if device_type != "cuda":
        return f"the cuda backend runs on CUDA tensors, not {device_type}"
    if not _extension.loaded():
        return _extension.load_error
    if not _extension.has_cuda_kernels():
        return "fusedlstm._C was built without CUDA kernels (CPU-only torch or no nvcc at build time)"
    return None


def _plan_unavailable(device_type: str) -> str | None:
    """Every backend's layer reads the layer plan, which fusedlstm._C builds."""
    return None if _extension.loaded() else f"the layer plan needs fusedlstm._C: {_extension.load_error}"


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "off", "no")


_triton_module = None


def _triton_ops():
    # Imported here, never at `import fusedlstm`: importing triton is slow
    # and the kernels' form (compiled or interpreted) is fixed at import.
    # Kept after the first call: torch.compile cannot trace importlib, so a
    # traced forward must find the module here (seen on an H200, 2026-11-28).
    global _triton_module
    if _triton_module is None:
        _triton_module = importlib.import_module("fusedlstm.triton.ops")
    return _triton_module


def _triton_unavailable(device_type: str) -> str | None:
    if device_type not in ("cuda", "cpu"):
        return f"the triton backend runs on CUDA tensors, not {device_type}"
    if device_type == "cpu" and not _interpreter_requested():
        return ("the triton backend runs on CPU tensors only under the Triton interpreter: "
                "set TRITON_INTERPRET=1 before fusedlstm.triton is imported")
    if not _extension.loaded():
        return _plan_unavailable(device_type)
    try:
        triton_ops = _triton_ops()
    except ImportError as exc:
        return f"triton cannot be imported ({exc})"
    if device_type == "cpu" and not triton_ops.INTERPRETED:
        return ("TRITON_INTERPRET=1 was set after fusedlstm.triton was imported, so its kernels "
                "were made for GPUs; set it before the import")
    return None


BACKENDS: dict[str, Backend] = {
    "cpu": Backend("cpu", _cpu_unavailable, lambda: ops.cpp),
    "cuda": Backend("cuda", _cuda_unavailable, lambda: ops.cpp, step=lambda: ops.cpp_step),
    "triton": Backend("triton", _triton_unavailable, lambda: _triton_ops().OPS,
                      layer_path=lambda H, P, dtype: _triton_ops().layer_implementation(H, P, dtype)),
    "reference": Backend("reference", _plan_unavailable,
                         lambda: SimpleNamespace(cell=reference.lstm_cell, layer=reference.lstm_layer)),
}

# Meta tensors (shapes without data, as nn.LSTM takes them) go through the C++ ops'
# fake rules whatever the backend, or the reference where the extension is not built.
SHAPES_ONLY = Backend("meta", lambda device_type: None,
                      lambda: ops.cpp or BACKENDS["reference"].implementation())

# Preference order of "auto" for CPU tensors and for other non-CUDA devices.
_AUTO_ORDER = {"cpu": ("cpu", "reference")}

MEASURED = choice.index(choice_table.MEASURED)
"""The recorded GPU runs' choice table, indexed for choice.choose."""

_usable_cache: dict[str, tuple[str, ...]] = {}


def register(backend: Backend) -> None:
    """Add a backend, or replace one of the same name."""
    BACKENDS[backend.name] = backend
    _usable_cache.clear()
    _choices.clear()


def available_backends(device="cpu") -> list[str]:
    """Names of the backends usable for tensors on `device`."""
    device_type = torch.device(device).type
    return [name for name, b in BACKENDS.items() if b.unavailable(device_type) is None]


def check_name(name: str) -> str:
    if name != AUTO and name not in BACKENDS:
        raise ValueError(f"backend must be one of {[AUTO, *BACKENDS]}, got {name!r}")
    return name


def default_name() -> str:
    """"auto", or the FUSEDLSTM_BACKEND override."""
    return check_name(os.environ.get(ENV_VAR) or AUTO)


def module_setting(name: str) -> str:
    """The backend a module stores for its `backend` argument: FUSEDLSTM_BACKEND or
    "auto" for "auto", else the checked name. Naming "triton" imports its kernels
    here, outside any forward that torch.compile traces; an ImportError is left to
    `resolve`, which reports it when the backend is used."""
    setting = default_name() if name == AUTO else check_name(name)
    if setting == "triton":
        try:
            _triton_ops()
        except ImportError:
            pass
    return setting


@constant_when_traced  # read at trace time: availability is fixed in a process
def _usable(device_type: str) -> tuple[str, ...]:
    """available_backends(device_type), found once per process (for CUDA this
    imports triton, outside any traced forward)."""
    if device_type not in _usable_cache:
        _usable_cache[device_type] = tuple(name for name, b in BACKENDS.items()
                                           if b.unavailable(device_type) is None)
    return _usable_cache[device_type]


_arch_cache: dict[int, str] = {}
DTYPE_OF = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
            "float16": torch.float16}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPE_OF.items()}


@constant_when_traced
def gpu_arch(index: int | None) -> str:
    """"sm_90" for a GPU of compute capability (9, 0); queried once per device, on first use."""
    index = torch.cuda.current_device() if index is None else index
    if index not in _arch_cache:
        major, minor = torch.cuda.get_device_capability(index)
        _arch_cache[index] = f"sm_{major}{minor}"
    return _arch_cache[index]


def query(arch: str | None, op: str, dtype: torch.dtype, hidden: int, proj: int, batch: int,
          packed: bool) -> choice.Query:
    """The choice.Query of this work on a GPU of architecture `arch` (gpu_arch),
    with the float32 matmul setting of now."""
    return choice.Query(op, arch, _DTYPE_NAMES.get(dtype, str(dtype)),
                        float32_matmul_precision() if dtype == torch.float32 else "",
                        hidden, proj, batch, packed)


def auto_choice(q: choice.Query, usable: tuple[str, ...] | None = None) -> choice.Choice:
    """What "auto" runs for `q` on CUDA tensors, of the backends usable there
    (or `usable`)."""
    return choice.choose(q, _usable("cuda") if usable is None else usable, MEASURED)


_choices: dict[tuple, Backend] = {}  # auto_choice's answers by work, for eager calls


def _auto_on_cuda(index: int | None, op: str, dtype: torch.dtype, hidden: int, proj: int, batch: int,
                  packed: bool) -> Backend:
    """What "auto" runs for this work on CUDA device `index`. Eager calls look
    it up (building the choice costs ~10 us, a lookup ~1 us); traced ones build
    it, since the batch may be symbolic there, and the graph keeps it."""
    precision = float32_matmul_precision() if dtype == torch.float32 else ""
    if torch.compiler.is_compiling():
        return BACKENDS[auto_choice(query(gpu_arch(index), op, dtype, hidden, proj, batch, packed)).backend]
    key = (index, op, dtype, precision, hidden, proj, batch, packed)
    backend = _choices.get(key)
    if backend is None:
        if len(_choices) >= 4096:  # many batch sizes: start afresh rather than grow
            _choices.clear()
        q = query(gpu_arch(index), op, dtype, hidden, proj, batch, packed)
        backend = _choices[key] = BACKENDS[auto_choice(q).backend]
    return backend


def resolve(name: str, device: torch.device, op: str = "layer", dtype: torch.dtype | None = None,
            hidden: int = 0, proj: int = 0, batch: int = 0, packed: bool = False) -> Backend:
    """The backend to run for tensors on `device`; a clear error if unusable.
    For "auto" on CUDA tensors the work (op, dtype, sizes, batch, packed)
    picks it (auto_choice); without a dtype, choice.DEFAULT's order does."""
    device_type = device.type
    if device_type == "meta":
        return SHAPES_ONLY
    if name == AUTO:
        if device_type == "cuda":
            if dtype is None:
                return BACKENDS[choice.default(_usable("cuda"))]
            return _auto_on_cuda(device.index, op, dtype, hidden, proj, batch, packed)
        for candidate in _AUTO_ORDER.get(device_type, ("reference",)):
            backend = BACKENDS.get(candidate)
            if backend is not None and backend.unavailable(device_type) is None:
                return backend
        name = "reference"
    backend = BACKENDS[name]
    reason = backend.unavailable(device_type)
    if reason is not None:
        raise RuntimeError(f"fusedlstm: backend {name!r} is not available for {device_type} tensors "
                           f"({reason}); available: {available_backends(device)}")
    return backend


# What each layer path is, in words (Backend.layer_path's names).
PATH_WORDS = {
    "per-step": "a GEMM and a fused cell kernel per step",
    "persistent": "one launch per layer, W_hh on chip",
    "streamed": "one launch per layer, W_hh streamed from L2",
}


def implementation(name: str, q: choice.Query) -> str:
    """The code backend `name` runs for `q`, in words."""
    backend = BACKENDS[name]
    if q.op == "cell":
        if backend.step is not None and q.batch <= STEP_MAX_BATCH:
            return "one launch per step without gradients, else two GEMMs and a fused cell kernel"
        return "two GEMMs and a fused cell kernel per step"
    path = backend.layer_path(q.hidden, q.proj or q.hidden, DTYPE_OF[q.dtype])
    return PATH_WORDS.get(path, path)


def explain(q: choice.Query, usable: tuple[str, ...] | None = None) -> str:
    """What "auto" runs for `q` on CUDA tensors, the code and why, in one line."""
    picked = auto_choice(q, usable)
    return f"{picked.backend} ({implementation(picked.backend, q)}): {picked.reason(q)}"


def auto_summary(q: choice.Query, usable: tuple[str, ...] | None = None) -> str:
    """What "auto" runs at q's sizes for every batch, dense and packed, e.g.
    "dense: triton for batch <= 32, else cuda; packed: cuda" (q.batch and
    q.packed are ignored; cells have no packed input)."""
    parts = []
    for packed in ((False,) if q.op == "cell" else (False, True)):
        base = replace(q, batch=1, packed=packed)
        edges = sorted({p.batch for p in MEASURED.get(base.key, ()) if p.covers(base)})
        segments: list[tuple[int, str]] = []  # (last batch, 0 for no limit; backend)
        for first, last in zip([1] + [e + 1 for e in edges], edges + [0]):
            name = auto_choice(replace(base, batch=first), usable).backend
            if segments and segments[-1][1] == name:
                segments[-1] = (last, name)
            else:
                segments.append((last, name))
        text = ", else ".join(f"{name} for batch <= {last}" if last else name for last, name in segments)
        parts.append(text if q.op == "cell" else ("packed: " if packed else "dense: ") + text)
    if len(parts) == 2 and parts[0][len("dense: "):] == parts[1][len("packed: "):]:
        return parts[1][len("packed: "):]
    return "; ".join(parts)


def module_note(setting: str, weight: torch.Tensor, op: str, hidden: int, proj: int) -> str:
    """For a module's repr: what "auto" runs for its CUDA parameters, by batch,
    and the command that says why (empty for other settings and devices)."""
    if setting != AUTO or weight.device.type != "cuda":
        return ""
    q = query(gpu_arch(weight.device.index), op, weight.dtype, hidden, proj, 1, False)
    ask = (f"fusedlstm info --hidden-size {hidden}" + (f" --proj-size {proj}" if proj else "")
           + f" --dtype {q.dtype} --batch B" + (" --cell" if op == "cell" else ""))
    return f" ({q.arch} {q.dtype}{' ' + q.precision if q.precision else ''}: {auto_summary(q)}; why: {ask})"
