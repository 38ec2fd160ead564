"""The float32 matmul precision torch asks for on CUDA, which every backend follows."""

from __future__ import annotations

import torch

def constant_when_traced(fn):
    """torch.compiler.assume_constant_result(fn) without its import of
    torch._dynamo (5.5 s, and triton with it, at `import fusedlstm`): the mark
    it sets. torch.compile then calls fn at trace time and keeps the result
    as a constant of the graph, instead of tracing into the C++ getters."""
    fn._dynamo_marked_constant = True
    return fn


# torch >= 2.9 keeps one setting per backend and op, which
# torch.backends.cuda.matmul.fp32_precision reads through a module __getattr__
# (5.6 us a call here, against 0.13 us for the getter it calls); older torch
# has allow_tf32 alone.
_precision_getter = getattr(torch._C, "_get_fp32_precision_getter", None)


@constant_when_traced  # a setting read at trace time, not a traced op
def float32_matmul_precision() -> str:
    """"tf32" when torch lets float32 matmuls on CUDA round their inputs to TF32
    (torch.backends.cuda.matmul.fp32_precision = "tf32", which
    torch.backends.cuda.matmul.allow_tf32 = True and
    torch.set_float32_matmul_precision("high" or "medium") also set), else
    "ieee" (torch's default, "highest"). cuBLAS reads the same setting for the
    CUDA backend's GEMMs."""
    if _precision_getter is not None:
        return "tf32" if _precision_getter("cuda", "matmul") == "tf32" else "ieee"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
