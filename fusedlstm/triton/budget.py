"""On-chip budget of the persistent kernels, measured without a GPU.

Compiles the forward and backward kernels of persistent.py (or, with
--kernel streamed, streamed.py) ahead of time for an
NVIDIA target (default sm_90, H100/H200) with the installed Triton, and
reports what ptxas allotted: registers per thread, spilled bytes (local
memory), and shared memory per program. A configuration that spills or
needs more shared memory than the SM offers is outside what the kernel
should serve; persistent.SIZE_LIMITS is set from this table.

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

SHARED_PER_BLOCK = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
MAX_REGISTERS = 255

_DTYPES = ("bf16", "fp16", "fp32", "fp64")


_STATE_BUFFERS = ("c_buf_ptr", "dh_buf_ptr", "dc_buf_ptr")  # the streamed kernel's float32 / float64 state


def _signature(kernel, dtype: str, constexprs: dict) -> dict:
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in ("sizes_ptr", "offsets_ptr"):
            signature[name] = "*i32"
        elif name in _STATE_BUFFERS:
            signature[name] = "*fp64" if dtype == "fp64" else "*fp32"
        elif name.endswith("_ptr"):
            signature[name] = "*" + dtype
        else:
            signature[name] = "i32"
    return signature


def compile_report(kernel_name: str, which: str, dtype: str, H: int, P: int, proj: bool, arch: int,
                   warps: int | None = None) -> dict:
    """Compile the forward or backward kernel of persistent.py or streamed.py
    -> registers, spilled bytes, shared bytes, num_warps."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import persistent, streamed

    module = persistent if kernel_name == "persistent" else streamed
    kernel = getattr(module, f"_lstm_{kernel_name}_{which}_kernel")
    data = {"bf16": tl.bfloat16, "fp16": tl.float16, "fp32": tl.float32, "fp64": tl.float64}[dtype]
    constexprs = dict(HAS_PROJ=proj, PACKED=True, REVERSE=False, DOT=data,
                      MATH=tl.float64 if dtype == "fp64" else tl.float32, BLOCK_B=persistent.BLOCK_B)
    if kernel_name == "persistent":
        block_h, block_p = persistent._blocks(H, P)
        constexprs.update(BLOCK_H=block_h, BLOCK_P=block_p)
        default_warps = persistent.num_warps(block_h, block_p)
    else:
        constexprs.update(BLOCK_J=streamed.BLOCK_J, BLOCK_K=streamed.BLOCK_K)
        default_warps = 4  # Triton's default, what the launcher uses
    if which == "fwd":
        constexprs["SAVE"] = True
    else:
        constexprs["HAS_GO"] = True
        if kernel_name == "persistent":
            constexprs.update(HAS_DH_N=True, HAS_DC_N=True)
    if not proj:
        constexprs["w_hr_ptr"] = None
        constexprs["hr_buf_ptr" if which == "fwd" else "dh_out_ptr"] = None
    constexprs = {k: v for k, v in constexprs.items() if k in kernel.arg_names}
    source = ASTSource(fn=kernel, signature=_signature(kernel, dtype, constexprs), constexprs=constexprs)
    num_warps = warps or default_warps
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", cubin.name],
                               capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|LOCAL|SHARED):(\d+)", usage))
    return dict(registers=int(fields["REG"]), spilled=int(fields["LOCAL"]),
                shared=compiled.metadata.shared + int(fields["SHARED"]), num_warps=num_warps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (default 90)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256], help="H (= P) values")
    parser.add_argument("--dtypes", nargs="+", default=list(_DTYPES[:3]), choices=_DTYPES)
    parser.add_argument("--proj", action="store_true", help="with a projection, P = H / 2")
    parser.add_argument("--warps", type=int, help="num_warps (default: the kernel's choice)")
    parser.add_argument("--kernel", choices=["persistent", "streamed"], default="persistent")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("fusedlstm.triton.budget: unset TRITON_INTERPRET; the interpreter compiles nothing")
    shared_limit = SHARED_PER_BLOCK.get(args.arch)
    print(f"sm_{args.arch}: at most {MAX_REGISTERS} registers per thread, "
          f"{shared_limit // 1024 if shared_limit else '?'} KiB shared memory per block")
    print(f"{'kernel':6} {'dtype':5} {'H':>4} {'P':>4} {'warps':>5} {'regs':>5} {'spilled B':>9} "
          f"{'shared KiB':>10}  fits")
    for dtype in args.dtypes:
        for H in args.sizes:
            P = H // 2 if args.proj else H
            for which in ("fwd", "bwd"):
                try:
                    r = compile_report(args.kernel, which, dtype, H, P, args.proj, args.arch, args.warps)
                except Exception as exc:  # a compiler failure is a result here: report it, go on
                    print(f"{which:6} {dtype:5} {H:>4} {P:>4}  compile failed: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}")
                    continue
                ok = r["spilled"] == 0 and (shared_limit is None or r["shared"] <= shared_limit)
                print(f"{which:6} {dtype:5} {H:>4} {P:>4} {r['num_warps']:>5} {r['registers']:>5} "
                      f"{r['spilled']:>9} {r['shared'] / 1024:>10.1f}  {'yes' if ok else 'no'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
