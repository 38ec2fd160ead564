"""Loading of the compiled extension `fusedlstm._C`, guarded.

`import fusedlstm` works without it; the backends, which all need it (the
C++ kernels, or the layer plan it builds), then report why they are
unavailable. Loading checks first that the build matches this process's torch.

The CPU kernels are built for several SIMD levels (`build_info.CPU_CAPABILITIES`,
best first) and loading chooses one for this process: the best level whose
instructions this CPU has. FUSEDLSTM_CPU_CAPABILITY=AVX512, AVX2 or DEFAULT
(any case), read at load, caps it, as ATEN_CPU_CAPABILITY caps ATen's kernels.
A value naming no level built in leaves the CPU kernels unusable: `cpu_capability`
is None, `cpu_capability_error` says why, and every CPU kernel raises that error.
"""

from __future__ import annotations

import importlib

import torch


def _mismatch(info) -> str | None:
    if info.TORCH_VERSION != torch.__version__:
        return (f"fusedlstm._C was built against torch {info.TORCH_VERSION} but torch "
                f"{torch.__version__} is installed; reinstall fusedlstm "
                f"(pip install --no-build-isolation .)")
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


def _choose_cpu_capability(extension) -> tuple[str | None, str | None]:
    if extension is None:
        return None, None
    try:
        return extension.cpu_capability(), None
    except ValueError as exc:
        return None, str(exc)


module, build_info, load_error = _load()
# The SIMD level of the CPU kernels in this process, or why there is none.
cpu_capability, cpu_capability_error = _choose_cpu_capability(module)


def loaded() -> bool:
    return module is not None


def has_cuda_kernels() -> bool:
    """True when the loaded extension registered CUDA kernels for the ops."""
    return loaded() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "fusedlstm::lstm_layer_fwd", "CUDA")
