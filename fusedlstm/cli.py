"""The `fusedlstm` command line.

    fusedlstm info    versions, compiled kernels, usable backends, GPU
    fusedlstm train   train the character-level language model on a text
    fusedlstm sample  generate text from a trained model
    fusedlstm bench   time nn.LSTM and every usable backend on the same cases

Each part of the package adds its own subcommands in build_parser().
"""

from __future__ import annotations

import argparse
import sys

from .bench import cli as bench_cli
from .charlm import cli as charlm_cli


def info(args: argparse.Namespace) -> int:
    import torch

    from . import __version__, _extension
    from .backends import available_backends

    build = _extension.build_info
    rows = [
        ("fusedlstm", __version__),
        ("torch", torch.__version__),
        ("torch CUDA", torch.version.cuda or "none (CPU-only build)"),
        ("extension", "loaded" if _extension.loaded() else f"not loaded: {_extension.load_error}"),
    ]
    if build is not None:
        rows += [
            ("built against torch", build.TORCH_VERSION),
            ("CPU kernels", f"C++, {_extension.cpu_capability or _extension.cpu_capability_error or 'not loaded'}"
                            f" (built for {', '.join(build.CPU_CAPABILITIES)}; FUSEDLSTM_CPU_CAPABILITY caps it)"),
            ("CUDA kernels", f"compiled (CUDA {build.CUDA_VERSION}, arch {build.CUDA_ARCH_LIST})"
             if _extension.has_cuda_kernels() else "not compiled"),
        ]
    rows.append(("backends for CPU tensors", ", ".join(available_backends("cpu"))))
    # Querying the GPU happens here, at command time, never at import.
    gpu = torch.cuda.is_available()
    rows.append(("GPU", torch.cuda.get_device_name(0) if gpu else "none visible"))
    rows.append(("backends for CUDA tensors",
                 ", ".join(available_backends("cuda")) + ("" if gpu else " (no GPU here to run them)")))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusedlstm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, compiled kernels and usable backends").set_defaults(run=info)
    charlm_cli.add_commands(commands)
    bench_cli.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
