"""The SIMD levels of the C++ CPU kernels: each level built in gives the oracle's
results, the level follows the CPU's flags and FUSEDLSTM_CPU_CAPABILITY, and the
code that runs on every CPU (load, dispatch, the DEFAULT kernels) holds no
instruction that a lesser CPU lacks (read from the built library's disassembly)."""

import bisect
import functools
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusedlstm import _extension, ops, reference
from lstm_testing import assert_close, check_layer_bwd, grads_like, layer_sample

ROOT = Path(__file__).resolve().parents[1]
X86_LEVELS = ("AVX512", "AVX2", "DEFAULT")

needs_cpp = pytest.mark.skipif(not _extension.loaded(), reason=f"fusedlstm._C not loaded: {_extension.load_error}")
needs_x86_levels = pytest.mark.skipif(
    _extension.build_info is None or _extension.build_info.CPU_CAPABILITIES != X86_LEVELS,
    reason=f"the CPU kernels are not built for {', '.join(X86_LEVELS)} (not x86-64, or not built)")


def proc_cpuinfo_flags() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1] for line in lines if line.startswith("flags")), "")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env}, timeout=600)


# --- the choice -------------------------------------------------------------------------------

@needs_cpp
@needs_x86_levels
@pytest.mark.parametrize("cpu_flags,requested,expected", [
    ("", None, "DEFAULT"),
    ("fpu sse sse2 avx", None, "DEFAULT"),
    ("avx2 fma", None, "DEFAULT"),  # no f16c
    ("sse2 avx avx2 fma f16c bmi2", None, "AVX2"),
    ("sse2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512dq avx512cd", None, "AVX512"),
    ("avx2 fma f16c avx512f avx512bw avx512dq", None, "AVX2"),  # no avx512vl
    ("avx2 fma f16c avx512f avx512bw avx512vl avx512dq", "AVX2", "AVX2"),
    ("avx2 fma f16c avx512f avx512bw avx512vl avx512dq", "avx2", "AVX2"),
    ("avx2 fma f16c avx512f avx512bw avx512vl avx512dq", "Default", "DEFAULT"),
    ("avx2 fma f16c avx512f avx512bw avx512vl avx512dq", "", "AVX512"),
    ("avx2 fma f16c", "AVX512", "AVX2"),  # a cap, not a demand
    ("avx2 fma", "AVX2", "DEFAULT"),
])
def test_choice_follows_cpu_flags_and_cap(cpu_flags, requested, expected):
    assert _extension.module._choose_cpu_capability(cpu_flags, requested) == expected


@needs_cpp
@needs_x86_levels
def test_unknown_level_name_is_a_value_error():
    with pytest.raises(ValueError, match=r'FUSEDLSTM_CPU_CAPABILITY must be one of AVX512, AVX2, DEFAULT .*got "AVX3"'):
        _extension.module._choose_cpu_capability("avx2 fma f16c", "AVX3")


@needs_cpp
def test_level_in_use_is_this_cpus():
    expected = _extension.module._choose_cpu_capability(
        proc_cpuinfo_flags(), os.environ.get("FUSEDLSTM_CPU_CAPABILITY") or None)
    assert _extension.cpu_capability == expected
    assert _extension.module.cpu_capability() == expected


@needs_cpp
def test_unknown_override_is_a_clear_error():
    result = run_python(
        "import torch\n"
        "from fusedlstm import _extension, ops\n"
        "print(_extension.cpu_capability)\n"
        "print(_extension.cpu_capability_error)\n"
        "try:\n"
        "    ops.cpp.cell(torch.zeros(2, 8), torch.zeros(2, 2))\n"
        "except ValueError as exc:\n"
        "    print('ValueError:', exc)\n",
        FUSEDLSTM_CPU_CAPABILITY="AVX3")
    assert result.returncode == 0, result.stderr
    level, error, raised = result.stdout.splitlines()[:3]
    expected = 'FUSEDLSTM_CPU_CAPABILITY must be one of ' + ", ".join(_extension.build_info.CPU_CAPABILITIES)
    assert level == "None"
    assert error.startswith(expected) and error.endswith('got "AVX3"')
    assert raised.startswith("ValueError: " + expected)


# --- every level against the oracle -----------------------------------------------------------

# H = 40: full vectors at every width (16 floats with AVX-512, 8 with AVX2) and a
# tail; 7 rows: whole micro-kernel tiles (6 or 2 rows) and a partial one; a
# projection of 24 columns: part of one packed panel.
WIDE = dict(H=40, P=24, lengths=[9, 9, 7, 4, 4, 2, 1])


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layout,proj,reverse", [("dense", False, False), ("dense", True, True),
                                                 ("packed", False, True), ("packed", True, False)])
def test_cpu_kernels_match_oracle_at_vector_widths(layout, proj, reverse, dtype):
    args = list(layer_sample(layout, proj, reverse, dtype, **WIDE))
    for i in (1, 4):  # w_hh [4H, P], w_hr [P, H] as nn.LSTM draws them: entries ~ 1/sqrt(columns)
        if args[i] is not None:
            args[i] = args[i] / args[i].shape[1] ** 0.5
    actual = ops.cpp.layer_fwd(*args, True)
    expected = reference.lstm_layer_fwd(*args, True)
    for a, e, name in zip(actual, expected, ["output", "h_n", "c_n", "acts", "cells", "h_raw"]):
        assert_close(a, e, dtype, name)
    check_layer_bwd(ops.cpp.layer_bwd, args, expected, grads_like(expected[:3], 4), dtype)
    gates, c_prev = args[0].reshape(-1, 4 * WIDE["H"])[:7], args[3]
    for a, e in zip(ops.cpp.cell_fwd(gates, c_prev), reference.lstm_cell_fwd(gates, c_prev)):
        assert_close(a, e, dtype)


def levels_to_rerun():
    """Levels built in that this CPU can run, but which this process does not."""
    if _extension.build_info is None or not _extension.loaded():
        return []
    flags = proc_cpuinfo_flags()
    return [name for name in _extension.build_info.CPU_CAPABILITIES
            if name != _extension.cpu_capability and _extension.module._choose_cpu_capability(flags, name) == name]


# The C++ CPU backend's share of the parity suites: against nn.LSTM (every option,
# float16 and bfloat16 too) and, op by op, against the oracle. Not gradcheck and
# opcheck, half of that time: they check the oracle and the registration, which
# are the same at every level, and the ops' gradients are compared with the
# oracle's here.
PARITY_SUITES = ["tests/test_ops.py", "tests/test_parity.py", "tests/test_cell.py", "tests/test_reduced_precision.py",
                 "tests/test_cpu_capability.py::test_cpu_kernels_match_oracle_at_vector_widths"]
CPU_BACKEND_TESTS = "cpu and not triton and not reference-cpu and not cuda and not gradcheck and not opcheck"


@pytest.mark.slow
@pytest.mark.parametrize("level", levels_to_rerun())
def test_level_passes_cpu_parity_suites(level):
    """The parity and op suites of the C++ CPU backend, at a level this process does not
    run (it runs them at its own), in a process capped to that level."""
    env = {"FUSEDLSTM_CPU_CAPABILITY": level, "FUSEDLSTM_TEST_LOG": ""}
    chosen = run_python("from fusedlstm import _extension; print(_extension.cpu_capability)", **env)
    assert chosen.stdout.strip() == level, chosen.stderr
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PARITY_SUITES,
                             "-k", CPU_BACKEND_TESTS], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, **env}, timeout=3000)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, f"at {level}: {summary}\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    assert " passed" in summary and "failed" not in summary, summary


# --- what runs on every CPU, from the disassembly ---------------------------------------------

# AVX-512 shows in its registers (zmm, the masks k0-k7, xmm16-31 / ymm16-31), its
# broadcasts, or instructions that only EVEX encodes, whatever the registers.
AVX512_OPERAND = re.compile(r"%zmm|%k[0-7]\b|%[xy]mm(1[6-9]|2\d|3[01])\b|\{1to\d+\}")
AVX512_MNEMONIC = re.compile(
    r"vpternlog|vmovdq[au](8|16|32|64)|vperm[it]2|vcompress|vexpand|vrndscale|vgetexp|vgetmant|vscalef|"
    r"vfixupimm|vrcp14|vrsqrt14|vpro[lr]|vpsraq|vpabsq|vpm(ax|in)[su]q|vpmullq|v(insert|extract)[fi](32|64)x|"
    r"vshuf[fi](32|64)x|valign|vp?blendm|vfpclass|vreduce|vrange|vpconflict|vplzcnt|vcvt\w*u(dq|qq|si)|vcvtu|"
    r"vcvt\w*qq|vpmov(u?s)?(qd|qw|qb|dw|db|wb)$|vpmovm2|vpmov[bwdq]2m")


@functools.lru_cache(maxsize=1)
def disassembly():
    """{start: (name, end, [(mnemonic, operands, [referenced addresses])])} of the
    functions of fusedlstm._C, `end` being the address of the last instruction."""
    text = subprocess.run(["objdump", "-d", "-C", "-w", "--no-show-raw-insn", _extension.module.__file__],
                          capture_output=True, text=True, check=True).stdout
    functions, start = {}, None
    for line in text.splitlines():
        header = re.match(r"^([0-9a-f]+) <(.*)>:$", line)
        if header:
            start = int(header.group(1), 16)
            functions[start] = [header.group(2), start, []]
            continue
        fields = line.split("\t")
        if start is None or len(fields) < 2 or not fields[1].strip() or not fields[0].strip().endswith(":"):
            continue
        mnemonic, _, operands = fields[1].strip().partition(" ")
        targets = [int(a, 16) for a in re.findall(r"\b([0-9a-f]+) <", "\t".join(fields[1:]))]
        functions[start][1] = int(fields[0].strip()[:-1], 16)
        functions[start][2].append((mnemonic, operands.strip(), targets))
    return functions


def reachable(roots):
    """Start addresses of the functions that `roots` reach by calls, jumps and address loads."""
    functions = disassembly()
    starts = sorted(functions)
    seen, todo = set(roots), list(roots)
    while todo:
        for _, _, targets in functions[todo.pop()][2]:
            for target in targets:
                i = bisect.bisect_right(starts, target) - 1
                start = starts[i] if i >= 0 else None
                if start is not None and target <= functions[start][1] and start not in seen:  # code, not data
                    seen.add(start)
                    todo.append(start)
    return seen


def offending(addresses, is_bad):
    functions = disassembly()
    return sorted({functions[a][0] for a in addresses
                   if any(is_bad(mnemonic, operands) for mnemonic, operands, _ in functions[a][2])})


def uses_simd_extension(mnemonic, operands):  # VEX or EVEX encoded: AVX, AVX2, FMA, AVX-512
    return mnemonic.startswith("v")


def uses_avx512(mnemonic, operands):
    return bool(AVX512_MNEMONIC.match(mnemonic) or AVX512_OPERAND.search(operands))


def roots(select):
    return [a for a, (name, _, _) in disassembly().items() if select(name)]


needs_objdump = pytest.mark.skipif(shutil.which("objdump") is None or platform.machine() != "x86_64",
                                   reason="needs objdump and an x86-64 build")


@needs_cpp
@needs_x86_levels
@needs_objdump
def test_code_run_on_every_cpu_uses_no_simd_extension():
    """Static initialisers (every object's run at load, whatever its level), the module
    init, the dispatch and the DEFAULT kernels, and all they call: plain x86-64 (SSE2)."""
    generic = reachable(roots(lambda name: name.startswith(("_GLOBAL__sub_I", "PyInit__C"))
                              or ("fusedlstm::cpu::" in name and "AVX" not in name)))
    assert any("fusedlstm::cpu::DEFAULT::lstm_layer_fwd_cpu" in disassembly()[a][0] for a in generic)
    assert offending(generic, uses_simd_extension) == []


@needs_cpp
@needs_x86_levels
@needs_objdump
def test_avx2_kernels_use_no_avx512():
    avx2 = reachable(roots(lambda name: "fusedlstm::cpu::AVX2::" in name))
    avx512 = reachable(roots(lambda name: "fusedlstm::cpu::AVX512::" in name))
    assert offending(avx2, uses_avx512) == []
    # Each level is compiled with its own flags.
    assert offending(avx512, uses_avx512) != []
    assert offending(avx2, lambda mnemonic, operands: "%ymm" in operands) != []
