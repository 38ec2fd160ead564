"""On-chip budget of the Triton kernels, measured without a GPU.

Compiles the kernels of one layer implementation (persistent.py, streamed.py,
or the per-step path's cell kernels), with the arguments their launchers pass
(launch.capture_launches), ahead of time for an NVIDIA target (default sm_90,
H100/H200) with the installed Triton, and reports what ptxas allotted:
registers per thread, spilled bytes (local memory), and shared memory per
program. A configuration that spills or needs more shared memory than the SM
offers is outside what the kernel should serve; persistent.SIZE_LIMITS is
set from this table.

    python -m fusedlstm.triton.budget [--kernel streamed] [--arch 90] [--sizes 32 64 128 256]

Needs Triton's NVIDIA backend (the pip wheel ships ptxas and cuobjdump), not
a GPU, and must run without TRITON_INTERPRET=1. Compiling is slow (seconds
to minutes per kernel on 2 cores for the larger sizes).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .launch import capture_launches

SHARED_PER_BLOCK = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
MAX_REGISTERS = 255

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}
_TRITON_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64",
                 torch.int32: "i32", torch.int64: "i64"}


def ast_source(kernel, args: tuple, kwargs: dict):
    """(triton.compiler.ASTSource, compile options such as num_warps) of one
    captured launch kernel[grid](*args, **kwargs)."""
    from triton.compiler import ASTSource

    names = kernel.arg_names
    bound = {**dict(zip(names, args)), **{k: v for k, v in kwargs.items() if k in names}}
    signature, constexprs = {}, {}
    for name, param in zip(names, kernel.params):
        value = bound[name]
        if param.is_constexpr or value is None:
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _TRITON_TYPES[value.dtype]
        elif isinstance(value, int) and -2**31 <= value < 2**31:
            signature[name] = "i32"
        else:
            raise TypeError(f"{kernel.__name__}: argument {name}={value!r} is neither a tensor nor an int32")
    options = {k: v for k, v in kwargs.items() if k not in names}
    return ASTSource(fn=kernel, signature=signature, constexprs=constexprs), options


def layer_launches(implementation: str, dtype: torch.dtype, H: int, P: int, proj: bool,
                   T: int = 2, B: int = 16) -> list[tuple]:
    """The launches (kernel, args, kwargs) of one forward, saving for the
    backward, and one backward of a layer implementation ("persistent",
    "streamed" or "per-step"), on CPU tensors of a packed batch of B sequences
    of lengths T and 1; output size P with a projection (proj), else H."""
    from . import layer, persistent, streamed
    from .steps import Steps

    fwd, bwd = {"persistent": (persistent.lstm_persistent_fwd, persistent.lstm_persistent_bwd),
                "streamed": (streamed.lstm_streamed_fwd, streamed.lstm_streamed_bwd),
                "per-step": (layer.lstm_layer_fwd, layer.lstm_layer_bwd)}[implementation]
    out = P if proj else H
    batch_sizes = torch.tensor([B] + [B // 2] * (T - 1))
    rows = int(batch_sizes.sum())
    steps = Steps(batch_sizes, T, B, rows, False, torch.device("cpu"))

    def empty(*shape):
        return torch.zeros(shape, dtype=dtype)

    w_hh, h0, c0, w_hr = empty(4 * H, out), empty(B, out), empty(B, H), empty(out, H) if proj else None
    with capture_launches() as launches:
        output, _, _, acts, cells, h_raw = fwd(empty(rows, 4 * H), w_hh, h0, c0, w_hr, steps, True)
        bwd(empty(rows, out), empty(B, out), empty(B, H), w_hh, h0, c0, w_hr, steps, output, acts, cells, h_raw)
    return launches


def compile_report(kernel, args: tuple, kwargs: dict, arch: int = 90, warps: int | None = None) -> dict:
    """Compile one captured launch for sm_{arch} (with `warps` warps instead of
    the launcher's choice, if given) -> registers, spilled bytes, shared bytes,
    num_warps."""
    import triton
    from triton.backends.compiler import GPUTarget

    source, options = ast_source(kernel, args, kwargs)
    if warps is not None:
        options["num_warps"] = warps
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", cubin.name],
                               capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|LOCAL|SHARED):(\d+)", usage))
    return dict(registers=int(fields["REG"]), spilled=int(fields["LOCAL"]),
                shared=compiled.metadata.shared + int(fields["SHARED"]), num_warps=compiled.metadata.num_warps)


def distinct(launches: list[tuple]) -> list[tuple]:
    """The launches that compile differently (the per-step path launches the
    same two kernels every step)."""
    seen, kept = set(), []
    for kernel, args, kwargs in launches:
        source, options = ast_source(kernel, args, kwargs)
        key = (kernel.__name__, repr(source.signature), repr(source.constants), repr(options))
        if key not in seen:
            seen.add(key)
            kept.append((kernel, args, kwargs))
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (default 90)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256], help="H (= P) values")
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp16", "fp32"], choices=list(DTYPES))
    parser.add_argument("--proj", action="store_true", help="with a projection, P = H / 2")
    parser.add_argument("--warps", type=int, help="num_warps (default: the launcher's choice)")
    parser.add_argument("--kernel", choices=["persistent", "streamed", "per-step"], default="persistent")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("fusedlstm.triton.budget: unset TRITON_INTERPRET; the interpreter compiles nothing")
    shared_limit = SHARED_PER_BLOCK.get(args.arch)
    print(f"sm_{args.arch}: at most {MAX_REGISTERS} registers per thread, "
          f"{shared_limit // 1024 if shared_limit else '?'} KiB shared memory per block")
    print(f"{'kernel':24} {'dtype':5} {'H':>4} {'P':>4} {'warps':>5} {'regs':>5} {'spilled B':>9} "
          f"{'shared KiB':>10}  fits")
    for dtype in args.dtypes:
        for H in args.sizes:
            P = H // 2 if args.proj else H
            for kernel, kargs, kwargs in distinct(layer_launches(args.kernel, DTYPES[dtype], H, P, args.proj)):
                name = kernel.__name__.removeprefix("_lstm_").removesuffix("_kernel")
                try:
                    r = compile_report(kernel, kargs, kwargs, args.arch, args.warps)
                except Exception as exc:  # a compiler failure is a result here: report it, go on
                    print(f"{name:24} {dtype:5} {H:>4} {P:>4}  compile failed: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}")
                    continue
                ok = r["spilled"] == 0 and (shared_limit is None or r["shared"] <= shared_limit)
                print(f"{name:24} {dtype:5} {H:>4} {P:>4} {r['num_warps']:>5} {r['registers']:>5} "
                      f"{r['spilled']:>9} {r['shared'] / 1024:>10.1f}  {'yes' if ok else 'no'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
