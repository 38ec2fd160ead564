"""The float32 matmul precision torch asks for on CUDA, which every backend follows."""

from __future__ import annotations

import torch


@torch.compiler.assume_constant_result  # a setting read at trace time, not a traced op
def float32_matmul_precision() -> str:
    """"tf32" when torch lets float32 matmuls on CUDA round their inputs to TF32
    (torch.backends.cuda.matmul.fp32_precision = "tf32", or the older
    torch.backends.cuda.matmul.allow_tf32 = True and
    torch.set_float32_matmul_precision("high" or "medium"), which set it),
    else "ieee" (torch's default, "highest"). cuBLAS reads the same setting for
    the CUDA backend's GEMMs."""
    matmul = torch.backends.cuda.matmul
    try:
        setting = matmul.fp32_precision  # torch >= 2.9: reflects every way of setting it
    except AttributeError:
        return "tf32" if matmul.allow_tf32 else "ieee"
    return "tf32" if setting == "tf32" else "ieee"
