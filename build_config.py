"""The build configuration of fusedlstm._C, shared by setup.py (which imports this
module) and CMakeLists.txt (which runs `python build_config.py cmake BINARY_DIR` and
includes the BINARY_DIR/build_config.cmake it writes).

build_config.json holds what is data: sources, compiler flags, the SIMD levels of
the CPU kernels (compiler flags, and the CPU flags each needs), nvcc flags, the
default GPU architectures. This module holds what must be found on the build
machine or derived from that data:
  * the CUDA toolkit root, which is what nvcc reports (`nvcc --dryrun`: the nvcc on
    PATH may be a wrapper script, whose parent's parent is not the toolkit);
  * the headers and libnvrtc of the pip `nvidia-*` wheels, which torch's CUDA
    headers include and which the toolkit may lack;
  * the compiler arguments of each SIMD level, and the header that lists the
    levels for the load-time choice (csrc/cpu/register_cpu.cpp).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CONFIG = json.loads((ROOT / "build_config.json").read_text())
CAPABILITIES_HEADER = "cpu_capabilities.h"


class BuildConfigError(Exception):
    """The configuration or the build machine's setup cannot be used."""


def source_patterns(group: str) -> list[str]:
    """Absolute glob patterns of one group of build_config.json's "sources"."""
    return [(ROOT / pattern).as_posix() for pattern in CONFIG["sources"][group]]


def sources(group: str) -> list[str]:
    """The files of one group of build_config.json's "sources", relative to the
    project root: each pattern's matches, sorted (as CMake's file(GLOB) sorts them)."""
    files = []
    for pattern in CONFIG["sources"][group]:
        matches = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern))
        if not matches and not any(c in pattern for c in "*?["):
            raise BuildConfigError(f"build_config.json names the source {pattern}, which does not exist")
        files += matches
    return files


def include_dirs() -> list[str]:
    return [(ROOT / d).as_posix() for d in CONFIG["include_dirs"]]


def cpu_capabilities(machine: str | None = None) -> list[dict]:
    """The SIMD levels to build on `machine` (default: this one, platform.machine()),
    best first. The last one needs no CPU flags: every CPU can run it."""
    machine = machine or platform.machine()
    levels = [level for level in CONFIG["cpu_capabilities"] if machine in level.get("machines", [machine])]
    if not levels or levels[-1]["cpu_flags"]:
        raise BuildConfigError(f"build_config.json: the last SIMD level built on {machine} must need no CPU "
                               f"flags, so that every CPU has one; got {[level['name'] for level in levels]}")
    return levels


def capability_args(level: dict) -> list[str]:
    """Compiler arguments of the CPU kernels of one SIMD level. CPU_CAPABILITY names
    the level as at::vec and ATen's own kernels expect, and the kernels' namespace."""
    name = level["name"]
    return [f"-DCPU_CAPABILITY={name}", f"-DCPU_CAPABILITY_{name}", *level["compile_flags"]]


def capabilities_header(levels: list[dict]) -> str:
    entries = [f'  X({level["name"]}, "{" ".join(level["cpu_flags"])}")' for level in levels]
    return "\n".join([
        "// Written by build_config.py from build_config.json: the SIMD levels of the CPU",
        "// kernels built into this library, best first, each with the CPU flags (as",
        "// /proc/cpuinfo names them) that it needs.",
        "#pragma once",
        "#define FUSEDLSTM_CPU_CAPABILITIES(X) \\",
        " \\\n".join(entries),
        "",
    ])


def write_capabilities_header(directory: Path, levels: list[dict]) -> Path:
    """Writes directory/cpu_capabilities.h (unless it is already up to date, so that
    it does not trigger a rebuild) and returns `directory`, the include directory."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CAPABILITIES_HEADER
    text = capabilities_header(levels)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return directory


# --- the CUDA toolkit ---------------------------------------------------------------------------

def toolkit_root_from_nvcc(nvcc: str) -> str | None:
    """The toolkit root that nvcc itself uses (nvcc may be a wrapper script)."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    return str(Path(match.group(1).strip()).resolve()) if match else None


def find_cuda_home() -> str | None:
    """The CUDA toolkit root (holding bin/nvcc): CUDA_HOME or CUDA_PATH when set, else
    what the nvcc on PATH (or /usr/local/cuda's) reports; None when there is none."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root:
            if not (Path(root) / "bin" / "nvcc").exists():
                raise BuildConfigError(f"{var}={root} has no bin/nvcc; point it at the CUDA toolkit root")
            return str(Path(root).resolve())
    fallback = Path("/usr/local/cuda/bin/nvcc")
    nvcc = shutil.which("nvcc") or (str(fallback) if fallback.exists() else None)
    return toolkit_root_from_nvcc(nvcc) if nvcc else None


def nvidia_wheel_include_dirs() -> list[str]:
    """Header folders of the pip `nvidia-*` wheels (cusparse.h and friends)."""
    try:
        import nvidia
    except ImportError:
        return []
    return [str(sub / "include") for base in nvidia.__path__ for sub in sorted(Path(base).iterdir())
            if (sub / "include").is_dir()]


def nvrtc_library(cuda_home: str | None) -> str | None:
    """libnvrtc, which torch's CMake config asks for: the toolkit's, else a wheel's."""
    folders = ([Path(cuda_home) / "lib64"] if cuda_home else []) + [
        Path(d).parent / "lib" for d in nvidia_wheel_include_dirs()]
    for folder in folders:
        found = sorted(folder.glob("libnvrtc.so*"))
        if found:
            return str(found[0])
    return None


# --- CMake ----------------------------------------------------------------------------------------

def _cmake_value(items) -> str:
    items = [str(item) for item in (items if isinstance(items, (list, tuple)) else [items])]
    if any(";" in item for item in items):
        raise BuildConfigError(f"a CMake list item holds ';': {items}")
    escaped = ";".join(items).replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def cmake_script(binary_dir: Path) -> str:
    """CMake set() commands of the whole configuration (FUSEDLSTM_* variables)."""
    levels = cpu_capabilities()
    cuda_home = find_cuda_home()
    variables = {
        "FUSEDLSTM_INCLUDE_DIRS": include_dirs(),
        "FUSEDLSTM_GENERATED_INCLUDE_DIR": write_capabilities_header(binary_dir / "generated", levels),
        **{f"FUSEDLSTM_SOURCE_PATTERNS_{group}": source_patterns(group) for group in CONFIG["sources"]},
        "FUSEDLSTM_CXX_FLAGS": CONFIG["cxx_flags"],
        "FUSEDLSTM_NVCC_FLAGS": CONFIG["nvcc_flags"],
        "FUSEDLSTM_DEFAULT_CUDA_ARCH_LIST": CONFIG["default_cuda_arch_list"].split(";"),
        "FUSEDLSTM_CPU_CAPABILITIES": [level["name"] for level in levels],
        **{f"FUSEDLSTM_CPU_CAPABILITY_ARGS_{level['name']}": capability_args(level) for level in levels},
        "FUSEDLSTM_CUDA_ROOT": cuda_home or "",
        "FUSEDLSTM_NVIDIA_WHEEL_INCLUDES": nvidia_wheel_include_dirs(),
        "FUSEDLSTM_NVRTC_LIBRARY": nvrtc_library(cuda_home) or "",
    }
    lines = ["# Written by build_config.py from build_config.json; do not edit."]
    lines += [f"set({name} {_cmake_value(value)})" for name, value in variables.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] != "cmake":
        print("usage: python build_config.py cmake BINARY_DIR", file=sys.stderr)
        return 2
    binary_dir = Path(argv[2]).resolve()
    try:
        script = cmake_script(binary_dir)
    except BuildConfigError as exc:
        print(f"build_config.py: {exc}", file=sys.stderr)
        return 1
    (binary_dir / "build_config.cmake").write_text(script)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
