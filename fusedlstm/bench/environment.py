"""Where and with what a run was measured: machine, versions, commit."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from .. import __version__, _extension

# Set by whoever runs a copy of the tree without its .git (the GPU machine).
COMMIT_ENV_VAR = "FUSEDLSTM_COMMIT"


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.machine()


def git_commit() -> str | None:
    """The commit of the source tree fusedlstm runs from, "+dirty" when
    tracked files differ from it; FUSEDLSTM_COMMIT wins when set."""
    if os.environ.get(COMMIT_ENV_VAR):
        return os.environ[COMMIT_ENV_VAR]
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def onednn_version() -> str | None:
    # torch.__config__.show() names it "oneDNN" or, in some builds, "MKL-DNN".
    match = re.search(r"(?:oneDNN|MKL-DNN) v([\d.]+)", torch.__config__.show())
    return match.group(1) if match else None


def describe(device: str, command: str | None = None) -> dict:
    """Metadata of a run on `device` (queries the GPU when device is cuda)."""
    build = _extension.build_info
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": command,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "fusedlstm": __version__,
        "fusedlstm_build": ({k: v for k, v in vars(build).items() if k.isupper()}
                            if build is not None else None),
        "extension": "loaded" if _extension.loaded() else _extension.load_error,
        # The SIMD level of the C++ CPU kernels (or why they cannot run).
        "cpu_capability": _extension.cpu_capability or _extension.cpu_capability_error,
        "device": device,
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "onednn": onednn_version() if torch.backends.mkldnn.is_available() else None,
    }
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_multiprocessors=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
            # fp32 figures depend on these: with TF32 allowed, cuDNN's LSTM
            # multiplies fp32 on tensor cores at reduced precision.
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
            float32_matmul_precision=torch.get_float32_matmul_precision(),
        )
    return info


def machine_line(info: dict) -> str:
    """One line naming the machine of a run, for tables and plots."""
    if info.get("gpu"):
        what = f"{info['gpu']} (cc {info['gpu_capability']}), cuDNN {info['cudnn']}"
        if info.get("cudnn_allow_tf32"):
            what += " (TF32 allowed)"
        what += f", CUDA {info['torch_cuda']}"
    else:
        threads = info["torch_threads"]
        what = f"{info['cpu']}, {info['cpu_cores']} cores, {threads} torch thread{'s' * (threads != 1)}"
        if info.get("onednn"):
            what += f", oneDNN {info['onednn']}"
    return f"{what}; torch {info['torch']}"
