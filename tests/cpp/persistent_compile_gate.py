"""Compile gate of the persistent CUDA kernels for sm_90, without a GPU.

Compiles csrc/cuda/persistent_kernels.cu once with nvcc (-arch=sm_90,
ptxas -v, the PTX kept) and checks every kernel instantiation:
  - no spills and no stack frame (a register array indexed at run time
    would be one),
  - registers x threads per CTA (the PTX's .maxntid) within 65,536, one CTA
    per SM,
  - no static shared memory: all of it is the dynamic allocation that the
    tier selection sizes within the device's limit (persistent_tier.h),
  - the instructions the design rests on, in its PTX: in the cluster tier
    barrier.cluster arrive/wait and mapa (the DSMEM exchange); in the grid
    tier the counter barrier (atom.add.release.gpu, ld.acquire.gpu), loads
    from L2 (ld.global.cg) and none of the cluster's; mma.sync m16n8k16 with
    the kernel's 16-bit type and float accumulation in the bfloat16 /
    float16 kernels, none in the float32 ones (IEEE FFMA);
  - and, when a cuobjdump is found (the CUDA toolkit's, or the one in
    Triton's package), in the SASS: HMMA.16816.F32[.BF16], the cluster
    barrier (UCGABAR_ARV / UCGABAR_WAIT) or the grid's atomic add, no
    local-memory loads or stores.
Prints one line per kernel, the table that the source's comments cite.

    python persistent_compile_gate.py --nvcc NVCC --source persistent_kernels.cu -I DIR [-I DIR ...]
"""

from __future__ import annotations

import argparse
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

REGISTER_FILE = 65536


def find_cuobjdump(nvcc: str) -> str | None:
    beside = pathlib.Path(nvcc).resolve().parent / "cuobjdump"
    if beside.exists():
        return str(beside)
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton  # noqa: PLC0415 - optional: its package carries a cuobjdump
    except ImportError:
        return None
    candidate = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(candidate) if candidate.exists() else None


def kernel_name(mangled: str) -> str:
    """"forward cluster bfloat16" from the mangled name of an instantiation."""
    direction = "forward" if "persistent_forward_kernel" in mangled else "backward"
    tier = "grid" if "ELb1E" in mangled else "cluster"
    for tag, name in (("3F32", "float32"), ("4BF16", "bfloat16"), ("3F16", "float16")):
        if f"INS0_{tag}E" in mangled:
            return f"{direction} {tier} {name}"
    return mangled


def ptxas_report(text: str) -> dict[str, dict]:
    """{mangled name: {registers, stack, spill_stores, spill_loads, smem}} from ptxas -v."""
    kernels, current = {}, None
    for line in text.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)' for 'sm_90'", line):
            current = kernels.setdefault(m.group(1), {"smem": 0})
        elif current is not None and (m := re.search(
                r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current is not None and (m := re.search(r"Used (\d+) registers", line)):
            current["registers"] = int(m.group(1))
            if s := re.search(r"(\d+) bytes smem", line):
                current["smem"] = int(s.group(1))
    return kernels


def split_entries(text: str, start: str) -> dict[str, str]:
    """{mangled name: its text} for every kernel of a PTX or SASS listing."""
    pattern = r"\.visible \.entry (\w+)\(" if start == "ptx" else r"Function : (\w+)"
    marks = [(m.start(), m.group(1)) for m in re.finditer(pattern, text)]
    return {name: text[pos:(marks[i + 1][0] if i + 1 < len(marks) else len(text))]
            for i, (pos, name) in enumerate(marks)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nvcc", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("-I", dest="includes", action="append", default=[])
    args = parser.parse_args()

    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        obj = pathlib.Path(tmp) / "persistent_kernels.o"
        command = [args.nvcc, "-std=c++20", "-O3", "-arch=sm_90", "-Xptxas", "-v", "--keep", "--keep-dir", tmp,
                   *(f"-I{d}" for d in args.includes), "-c", args.source, "-o", str(obj)]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            print(run.stdout + run.stderr)
            print("FAIL: nvcc could not compile the kernels for sm_90")
            return 1
        report = ptxas_report(run.stdout + run.stderr)
        ptx_files = sorted(pathlib.Path(tmp).glob("*.ptx"))
        ptx = split_entries("".join(p.read_text() for p in ptx_files), "ptx")
        cuobjdump = find_cuobjdump(args.nvcc)
        sass = {}
        if cuobjdump:
            dump = subprocess.run([cuobjdump, "--dump-sass", str(obj)], capture_output=True, text=True, check=True)
            sass = split_entries(dump.stdout, "sass")

    if len(report) != 12:
        failures.append(f"expected 12 kernels (forward and backward x cluster and grid tier x float32, "
                        f"bfloat16, float16), ptxas reported {len(report)}")
    print(f"{'kernel':<26} {'regs':>4} {'threads':>7} {'regs x threads':>14} {'stack':>5} {'spills':>6} "
          f"{'static smem':>11}")
    for mangled, r in sorted(report.items(), key=lambda kv: kernel_name(kv[0])):
        name = kernel_name(mangled)
        text = ptx.get(mangled, "")
        threads = int(m.group(1)) if (m := re.search(r"\.maxntid (\d+), 1, 1", text)) else 0
        spills = r["spill_stores"] + r["spill_loads"]
        print(f"{name:<26} {r['registers']:>4} {threads:>7} {r['registers'] * threads:>14} {r['stack']:>5} "
              f"{spills:>6} {r['smem']:>11}")

        def need(ok: bool, what: str) -> None:
            if not ok:
                failures.append(f"{name}: {what}")

        need(threads > 0, "no .maxntid in its PTX (__launch_bounds__ missing)")
        need(spills == 0, f"{spills} bytes of spills")
        need(r["stack"] == 0, f"{r['stack']} bytes of stack frame")
        need(r["registers"] * threads <= REGISTER_FILE,
             f"{r['registers']} registers x {threads} threads > {REGISTER_FILE}")
        need(r["smem"] == 0, f"{r['smem']} bytes of static shared memory")
        direction, tier, number = name.split()
        cluster_only = ("barrier.cluster.arrive", "barrier.cluster.wait", "mapa.")
        grid_only = ("atom.add.release.gpu", "ld.acquire.gpu", "ld.global.cg")
        for instruction in ("bar.sync", *(cluster_only if tier == "cluster" else grid_only)):
            need(instruction in text, f"no {instruction} in its PTX")
        for instruction in grid_only if tier == "cluster" else cluster_only:
            need(instruction not in text, f"{instruction} in its PTX")
        mma = {"bfloat16": "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
               "float16": "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"}.get(number)
        if mma:
            need(mma in text, f"no {mma} in its PTX")
        else:
            need("mma." not in text and "tf32" not in text, "tensor-core instructions in the float32 kernel")
            need("fma.rn.f32" in text, "no fma.rn.f32 in its PTX")
        if sass:
            code = sass.get(mangled, "")
            if tier == "cluster":
                need("UCGABAR_ARV" in code and "UCGABAR_WAIT" in code, "no cluster barrier in its SASS")
            else:
                need("ATOM.E.ADD.64.STRONG.GPU" in code, "no atomic add of the grid barrier in its SASS")
            need(not re.search(r"\b(LDL|STL)\b", code), "local-memory loads or stores in its SASS")
            hmma = {"bfloat16": "HMMA.16816.F32.BF16", "float16": "HMMA.16816.F32 "}.get(number)
            if hmma:
                need(hmma in code, f"no {hmma.strip()} in its SASS")
            else:
                need("HMMA" not in code, "HMMA in the float32 kernel's SASS")
    print("SASS checked with " + cuobjdump if sass else "SASS not checked: no cuobjdump found")
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
