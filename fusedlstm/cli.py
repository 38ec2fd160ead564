"""The `fusedlstm` command line.

    fusedlstm info    versions, compiled kernels, usable backends, GPU, and what
                      backend="auto" runs on CUDA for given sizes, and why
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
    rows.append(("auto for CUDA tensors", auto_rule(args, gpu)))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def auto_rule(args: argparse.Namespace, gpu: bool) -> str:
    """What backend="auto" runs for the work the options describe, and why;
    without --hidden-size, where its measurements come from."""
    from . import backends, choice_table

    if args.hidden_size is None:
        runs = sorted({(p.arch, p.dtype + (f" {p.precision}" if p.precision else ""))
                       for p in choice_table.MEASURED})
        measured = ", ".join(f"{arch} {kind}" for arch, kind in runs) or "none"
        return (f"measured choice per op, GPU, dtype, size and batch (recorded runs: {measured}); "
                f"else {backends.choice.DEFAULT[0]}. Ask with --hidden-size/--batch/--dtype")
    arch = args.arch or (backends.gpu_arch(None) if gpu else None)
    q = backends.query(arch, "cell" if args.cell else "layer", backends.DTYPE_OF[args.dtype],
                       args.hidden_size, args.proj_size, args.batch, args.packed)
    return f"{q.describe()}: {backends.explain(q)}"


def add_info_options(parser: argparse.ArgumentParser) -> None:
    work = parser.add_argument_group("the work to ask backend=\"auto\" about (CUDA tensors)")
    work.add_argument("--hidden-size", type=int, metavar="H", help="hidden size")
    work.add_argument("--proj-size", type=int, default=0, metavar="P", help="proj_size (default 0)")
    work.add_argument("--batch", type=int, default=1, metavar="B", help="batch size (default 1)")
    work.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16", "float64"))
    work.add_argument("--packed", action="store_true", help="a PackedSequence input")
    work.add_argument("--cell", action="store_true", help="a FusedLSTMCell step, not a FusedLSTM layer")
    work.add_argument("--arch", metavar="sm_XY", help="GPU architecture (default: the visible GPU's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusedlstm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    info_parser = commands.add_parser("info", help="versions, compiled kernels, usable backends and "
                                      "what backend=\"auto\" runs on CUDA")
    add_info_options(info_parser)
    info_parser.set_defaults(run=info)
    charlm_cli.add_commands(commands)
    bench_cli.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
