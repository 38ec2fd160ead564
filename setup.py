"""Build fusedlstm._C, the one compiled extension of fusedlstm.

The C++ CPU kernels are always built. The CUDA kernels (csrc/cuda/*.cu) are
built when torch is a CUDA build and nvcc is found, with or without a GPU.

Switches (environment variables):
  FUSEDLSTM_CUDA=0/1        force a CPU-only build / make a missing CUDA
                            toolkit an error (default: build CUDA if possible)
  CUDA_HOME                 CUDA toolkit root (holding bin/nvcc and lib64);
                            found from nvcc when unset
  TORCH_CUDA_ARCH_LIST      GPU architectures (default: the visible GPUs',
                            or "8.0;9.0+PTX" when none is visible)
  MAX_JOBS                  parallel compile jobs (ninja)
  FUSEDLSTM_CPU_CAPABILITY  AVX512, AVX2 or DEFAULT: the SIMD level of the
                            CPU kernels (default: the build machine's, as
                            torch.backends.cpu.get_cpu_capability() reports)

Install with `pip install --no-build-isolation .` so that the extension is
built against the torch already installed.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"

# Compiler flags of each SIMD level of the CPU kernels; at::vec picks its
# vector width from the CPU_CAPABILITY macros.
CPU_CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "DEFAULT": [],
}


def env_switch(name):
    """None when unset, else True/False for "1"/"0"."""
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if value not in ("0", "1"):
        sys.exit(f"setup.py: {name} must be 0 or 1, got {value!r}")
    return value == "1"


def toolkit_root_from_nvcc(nvcc):
    """The toolkit root that nvcc itself uses (nvcc may be a wrapper script)."""
    try:
        out = subprocess.run(
            [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    return str(Path(match.group(1).strip()).resolve()) if match else None


def find_cuda_home():
    """CUDA toolkit root with bin/nvcc, or None."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root:
            if not (Path(root) / "bin" / "nvcc").exists():
                sys.exit(f"setup.py: {var}={root} has no bin/nvcc; point it at the CUDA toolkit root")
            return str(Path(root).resolve())
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    return toolkit_root_from_nvcc(nvcc) if nvcc else None


def nvidia_wheel_include_dirs():
    """Headers of the pip `nvidia-*` wheels (cusparse.h and friends), which
    torch's CUDA headers include and which the toolkit may lack."""
    try:
        import nvidia
    except ImportError:
        return []
    dirs = []
    for base in nvidia.__path__:
        for sub in sorted(Path(base).iterdir()):
            if (sub / "include").is_dir():
                dirs.append(str(sub / "include"))
    return dirs


def cpu_capability(torch):
    requested = os.environ.get("FUSEDLSTM_CPU_CAPABILITY")
    capability = (requested or torch.backends.cpu.get_cpu_capability()).upper()
    if capability not in CPU_CAPABILITY_FLAGS:
        if requested:
            sys.exit(f"setup.py: FUSEDLSTM_CPU_CAPABILITY must be one of "
                     f"{', '.join(CPU_CAPABILITY_FLAGS)}, got {requested!r}")
        capability = "DEFAULT"  # e.g. an ARM build: at::vec's portable path
    return capability


def loaded_libstdcxx():
    """The libstdc++ shared library this process has loaded (torch's C++ runtime,
    mapped once torch is imported), or None (not Linux, or not found)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and Path(fields[5]).name.startswith("libstdc++.so"):
            return fields[5]
    return None


def write_build_info(path, **info):
    lines = ['"""Written by setup.py: how this copy of fusedlstm._C was built."""', ""]
    lines += [f"{key.upper()} = {value!r}" for key, value in info.items()]
    path.write_text("\n".join(lines) + "\n")


def main():
    want_cuda = env_switch("FUSEDLSTM_CUDA")
    cuda_home = None
    if want_cuda is not False:
        cuda_home = find_cuda_home()
        if cuda_home:
            # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
            os.environ["CUDA_HOME"] = cuda_home

    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    torch_has_cuda = torch.version.cuda is not None
    build_cuda = want_cuda is not False and torch_has_cuda and cuda_home is not None
    if want_cuda and not build_cuda:
        reason = ("torch is a CPU-only build" if not torch_has_cuda
                  else "no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)")
        sys.exit(f"setup.py: FUSEDLSTM_CUDA=1 but {reason}")

    capability = cpu_capability(torch)
    # at::parallel_for is an OpenMP loop compiled into this extension: without
    # -fopenmp it runs on one thread. torch ships the libgomp it uses, and the
    # loader shares that one runtime with this library.
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    # Link the C++ runtime torch runs with, by path, ahead of the compiler's own
    # -lstdc++. On the H200 machine (g++ 13.3, Ubuntu 24.04; 2026-11-28) the
    # default link put a private copy of libstdc++'s stream and locale code
    # into _C (std::ostream::_M_insert<long> defined there, not imported). Its
    # facet ids disagree with the process's libstdc++, so the first integer
    # formatted into an error message called a codecvt facet as num_put:
    # SIGSEGV instead of the error.
    libstdcxx = loaded_libstdcxx()
    link_args = openmp + ([libstdcxx] if libstdcxx else [])
    cxx_flags = ["-O3", *openmp, f"-DCPU_CAPABILITY={capability}",
                 f"-DCPU_CAPABILITY_{capability}"] + CPU_CAPABILITY_FLAGS[capability]
    include_dirs = [str(CSRC / "include")]
    sources = [CSRC / "ops.cpp", CSRC / "layer_plan.cpp", CSRC / "python_module.cpp", *sorted((CSRC / "cpu").glob("*.cpp"))]
    arch_list = None
    if build_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.device_count() == 0:
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPUs")
        sources += sorted((CSRC / "cuda").glob("*.cu")) + sorted((CSRC / "cuda").glob("*.cpp"))
        include_dirs += nvidia_wheel_include_dirs()
        extension = CUDAExtension
        compile_args = {"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]}
    else:
        extension = CppExtension
        compile_args = {"cxx": cxx_flags}

    write_build_info(
        ROOT / "fusedlstm" / "_build_info.py",
        torch_version=torch.__version__,
        cuda_compiled=build_cuda,
        cuda_version=torch.version.cuda if build_cuda else None,
        cuda_arch_list=arch_list,
        cpu_capability=capability,
    )
    print(f"fusedlstm: building CPU kernels ({capability})"
          + (f" and CUDA kernels (CUDA_HOME={cuda_home}, arch {arch_list})" if build_cuda
             else " only: " + ("FUSEDLSTM_CUDA=0" if want_cuda is False else
                               "torch is CPU-only" if not torch_has_cuda else "nvcc not found")),
          file=sys.stderr)

    ext = extension(
        name="fusedlstm._C",
        sources=[str(s.relative_to(ROOT)) for s in sources],
        include_dirs=include_dirs,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtension})


if __name__ == "__main__":
    main()
