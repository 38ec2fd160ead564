"""Build fusedlstm._C, the one compiled extension of fusedlstm.

The C++ CPU kernels are always built, once per SIMD level of build_config.json
(AVX512, AVX2 and DEFAULT on x86-64); the level is chosen when the library loads,
from the CPU that runs it. The CUDA kernels (csrc/cuda) are built when torch is
a CUDA build and nvcc is found, with or without a GPU. Sources, flags and the
toolkit discovery come from build_config.json and build_config.py, which
CMakeLists.txt reads too.

Switches (environment variables):
  FUSEDLSTM_CUDA=0/1        force a CPU-only build / make a missing CUDA
                            toolkit an error (default: build CUDA if possible)
  CUDA_HOME                 CUDA toolkit root (holding bin/nvcc and lib64);
                            found from nvcc when unset
  TORCH_CUDA_ARCH_LIST      GPU architectures (default: the visible GPUs',
                            or build_config.json's default_cuda_arch_list
                            when none is visible)
  MAX_JOBS                  parallel compile jobs (ninja)

Install with `pip install --no-build-isolation .` so that the extension is
built against the torch already installed.
"""

import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import build_config  # noqa: E402  (beside this file, which pip does not put on sys.path)


def env_switch(name):
    """None when unset, else True/False for "1"/"0"."""
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if value not in ("0", "1"):
        sys.exit(f"setup.py: {name} must be 0 or 1, got {value!r}")
    return value == "1"


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


def per_level_build_ext(BuildExtension, levels):
    """torch's BuildExtension, which also compiles build_config.json's cpu_kernels
    sources once per SIMD level (its compiler arguments added to the extension's
    own) and links those objects into the extension."""

    class BuildExtensionPerCpuLevel(BuildExtension):
        def build_extension(self, ext):
            ext.include_dirs.append(str(build_config.write_capabilities_header(
                Path(self.build_temp).resolve() / "generated", levels)))
            objects = []
            # Lowest level first on the link line: where objects of several levels
            # define the same inline function of torch's or the standard library's
            # headers, the linker keeps the first copy, which must run on every CPU.
            for level in reversed(levels):
                objects += self.compiler.compile(
                    build_config.sources("cpu_kernels"),
                    output_dir=os.path.join(self.build_temp, "cpu_" + level["name"]),
                    include_dirs=ext.include_dirs, debug=self.debug, depends=ext.depends,
                    extra_postargs=ext.extra_compile_args["cxx"] + build_config.capability_args(level))
            ext.extra_objects = objects + list(ext.extra_objects)
            super().build_extension(ext)

    return BuildExtensionPerCpuLevel


def main():
    want_cuda = env_switch("FUSEDLSTM_CUDA")
    cuda_home = None
    try:
        levels = build_config.cpu_capabilities()
        if want_cuda is not False:
            cuda_home = build_config.find_cuda_home()
    except build_config.BuildConfigError as exc:
        sys.exit(f"setup.py: {exc}")
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
    compile_args = {"cxx": build_config.CONFIG["cxx_flags"] + openmp}
    include_dirs = build_config.include_dirs()
    sources = build_config.sources("common") + build_config.sources("python_module")
    arch_list = None
    if build_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.device_count() == 0:
            os.environ["TORCH_CUDA_ARCH_LIST"] = build_config.CONFIG["default_cuda_arch_list"]
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPUs")
        sources += build_config.sources("cuda")
        include_dirs += build_config.nvidia_wheel_include_dirs()
        extension = CUDAExtension
        compile_args["nvcc"] = build_config.CONFIG["nvcc_flags"]
    else:
        extension = CppExtension

    level_names = tuple(level["name"] for level in levels)
    write_build_info(
        ROOT / "fusedlstm" / "_build_info.py",
        torch_version=torch.__version__,
        cuda_compiled=build_cuda,
        cuda_version=torch.version.cuda if build_cuda else None,
        cuda_arch_list=arch_list,
        cpu_capabilities=level_names,
    )
    print(f"fusedlstm: building CPU kernels for {', '.join(level_names)} (one chosen at load)"
          + (f" and CUDA kernels (CUDA_HOME={cuda_home}, arch {arch_list})" if build_cuda
             else ", no CUDA kernels: " + ("FUSEDLSTM_CUDA=0" if want_cuda is False else
                                           "torch is CPU-only" if not torch_has_cuda else "nvcc not found")),
          file=sys.stderr)

    ext = extension(
        name="fusedlstm._C",
        sources=sources,
        include_dirs=include_dirs,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    setup(ext_modules=[ext], cmdclass={"build_ext": per_level_build_ext(BuildExtension, levels)})


if __name__ == "__main__":
    main()
