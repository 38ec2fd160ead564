"""Backends: which implementation of the op contract runs for which tensors.

    "cpu"        C++ kernels, CPU tensors
    "cuda"       CUDA C++ kernels, CUDA tensors (when compiled in)
    "triton"     Triton kernels (fusedlstm.triton), CUDA tensors when triton is
                 importable; CPU tensors too under the Triton interpreter
                 (TRITON_INTERPRET=1 set before fusedlstm.triton is imported)
    "reference"  plain PyTorch (fusedlstm.reference), any device
    "auto"       "cpu" for CPU tensors; "cuda", else "triton", else "reference",
                 for CUDA ones

FUSEDLSTM_BACKEND, when set, replaces "auto" for modules created afterwards.
Meta tensors (shapes only) run through the ops' fake rules whatever the backend.
Each backend offers `cell(gates, c_prev) -> (h, c)` and
`layer(x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse) -> (output, h_n, c_n)`,
both differentiable.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import torch

from . import _extension, ops, reference

AUTO = "auto"
ENV_VAR = "FUSEDLSTM_BACKEND"


@dataclass(frozen=True)
class Backend:
    name: str
    # device type -> None when usable there, else the reason it is not
    unavailable: Callable[[str], str | None]
    implementation: Callable[[], object]

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
    "cuda": Backend("cuda", _cuda_unavailable, lambda: ops.cpp),
    "triton": Backend("triton", _triton_unavailable, lambda: _triton_ops().OPS),
    "reference": Backend("reference", _plan_unavailable,
                         lambda: SimpleNamespace(cell=reference.lstm_cell, layer=reference.lstm_layer)),
}

# Meta tensors (shapes without data, as nn.LSTM takes them) go through the C++ ops'
# fake rules whatever the backend, or the reference where the extension is not built.
SHAPES_ONLY = Backend("meta", lambda device_type: None,
                      lambda: ops.cpp or BACKENDS["reference"].implementation())

# Preference order of "auto" per device type.
_AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}


def register(backend: Backend) -> None:
    """Add a backend, or replace one of the same name."""
    BACKENDS[backend.name] = backend


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


def resolve(name: str, device: torch.device) -> Backend:
    """The backend to run for tensors on `device`; a clear error if unusable."""
    device_type = device.type
    if device_type == "meta":
        return SHAPES_ONLY
    if name == AUTO:
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
