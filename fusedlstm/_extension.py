"""Loading of the compiled extension `fusedlstm._C`, guarded.

`import fusedlstm` works without it; the backends, which all need it (the
C++ kernels, or the layer plan it builds), then report why they are
unavailable. Loading checks first that the build matches this process: the
torch it was compiled against, and the SIMD instructions its CPU kernels use.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

# Instruction-set flags (/proc/cpuinfo) that each CPU_CAPABILITY needs.
_REQUIRED_CPU_FLAGS = {
    "AVX512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "f16c"},
    "AVX2": {"avx2", "fma", "f16c"},
    "DEFAULT": set(),
}


def _cpu_flags() -> set[str] | None:
    """The CPU's instruction-set flags, or None where /proc/cpuinfo is missing."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def _mismatch(info) -> str | None:
    if info.TORCH_VERSION != torch.__version__:
        return (f"fusedlstm._C was built against torch {info.TORCH_VERSION} but torch "
                f"{torch.__version__} is installed; reinstall fusedlstm "
                f"(pip install --no-build-isolation .)")
    flags = _cpu_flags()
    missing = (_REQUIRED_CPU_FLAGS.get(info.CPU_CAPABILITY, set()) - flags) if flags is not None else set()
    if missing:
        return (f"fusedlstm._C was built for {info.CPU_CAPABILITY} CPUs but this CPU lacks "
                f"{', '.join(sorted(missing))}; rebuild it here, or with "
                f"FUSEDLSTM_CPU_CAPABILITY=AVX2 or DEFAULT")
    return None


def _load():
    try:
        info = importlib.import_module("fusedlstm._build_info")
    except ImportError:
        return None, None, ("fusedlstm._C is not built (this is a source tree without "
                            "`pip install --no-build-isolation -e .`)")
    reason = _mismatch(info)
    if reason:
        return None, info, reason
    try:
        return importlib.import_module("fusedlstm._C"), info, None
    except ImportError as exc:
        return None, info, f"fusedlstm._C failed to load: {exc}"


module, build_info, load_error = _load()


def loaded() -> bool:
    return module is not None


def has_cuda_kernels() -> bool:
    """True when the loaded extension registered CUDA kernels for the ops."""
    return loaded() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "fusedlstm::lstm_layer_fwd", "CUDA")
