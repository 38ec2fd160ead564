"""float32 arithmetic follows torch's matmul setting on every backend: the
CUDA backend's cuBLAS GEMMs by themselves, the Triton kernels' dots through
the PRECISION each launch passes (launch.dot_precision): "ieee" at torch's
default, "tf32" when torch allows TF32. Checked without a GPU: the setting
read, the launches' arguments, and the TF32 kernels' sm_90 build."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusedlstm.precision import float32_matmul_precision


@pytest.fixture
def restore_precision():
    saved = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(saved)


@pytest.mark.parametrize("setting,expected", [("highest", "ieee"), ("high", "tf32"), ("medium", "tf32")])
def test_float32_matmul_precision_follows_torch(restore_precision, setting, expected):
    torch.set_float32_matmul_precision(setting)
    assert float32_matmul_precision() == expected
    assert torch.backends.cuda.matmul.allow_tf32 == (expected == "tf32")  # what cuBLAS reads


def launched_precisions(implementation, dtype, H=32):
    from fusedlstm.triton import budget

    return {(kernel.__name__, kwargs["PRECISION"])
            for kernel, _, kwargs in budget.layer_launches(implementation, dtype, H, H, False)}


@pytest.mark.parametrize("implementation", ["persistent", "streamed"])
def test_triton_dots_follow_the_setting_for_float32_only(restore_precision, implementation):
    pytest.importorskip("triton")
    torch.set_float32_matmul_precision("highest")
    assert {p for _, p in launched_precisions(implementation, torch.float32)} == {"ieee"}
    torch.set_float32_matmul_precision("high")
    assert {p for _, p in launched_precisions(implementation, torch.float32)} == {"tf32"}
    # 16-bit operands go to the tensor cores as they are; TF32 means nothing for them.
    assert {p for _, p in launched_precisions(implementation, torch.bfloat16)} == {"ieee"}


def compile_tf32_kernels_for_sm90():
    """The float32 one-launch kernels with TF32 dots, as their launchers pass
    them, compiled for sm_90 at their size limits with and without a
    projection: shared memory within a block's 227 KiB, no spills. Run by
    test_tf32_kernels_compile_for_sm90 in a process without TRITON_INTERPRET."""
    from fusedlstm.triton import budget

    torch.set_float32_matmul_precision("high")
    for implementation, H in (("persistent", 64), ("streamed", 256)):
        for proj in (False, True):
            launches = budget.layer_launches(implementation, torch.float32, H, H // 2 if proj else H, proj)
            for kernel, args, kwargs in budget.distinct(launches):
                assert kwargs["PRECISION"] == "tf32"
                report = budget.compile_report(kernel, args, kwargs, arch=90)
                print(kernel.__name__, H, "proj" if proj else "", report)
                assert report["shared"] <= budget.SHARED_PER_BLOCK[90], (kernel.__name__, H, proj, report)
                assert report["spilled"] == 0, (kernel.__name__, H, proj, report)


@pytest.mark.slow
def test_tf32_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import test_precision; test_precision.compile_tf32_kernels_for_sm90()"
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
