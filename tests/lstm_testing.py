"""Shared helpers of the test suite: backends and devices under test,
tolerances, samples of the ops' arguments, and running a module forward and
backward to collect everything to compare."""

from __future__ import annotations

import contextlib
import functools
import itertools

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from fusedlstm import backends, reference

# (backend, device) pairs of the parity suites. Every registered backend joins
# on every device it can serve; unusable pairs are skipped with the reason.
DEVICES = ("cpu", "cuda")


def backend_params():
    params = []
    for device in DEVICES:
        for name in backends.BACKENDS:
            if name == "cpu" and device != "cpu" or name == "cuda" and device != "cuda":
                continue
            marks = [pytest.mark.cuda] if device == "cuda" else []
            params.append(pytest.param(name, device, id=f"{name}-{device}", marks=marks))
    return params


def device_params():
    """"cpu", and "cuda" marked as a GPU test: the devices of the C++ ops' tests."""
    return [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]


def skip_unless_gpu(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")


def skip_unless_usable(backend: str, device: str) -> None:
    """Skip (with the reason) when `backend` cannot run on `device` here."""
    skip_unless_gpu(device)
    reason = backends.BACKENDS[backend].unavailable(torch.device(device).type)
    if reason is not None:
        pytest.skip(f"backend {backend!r} unavailable on {device}: {reason}")


# Tolerances: float64 near 1e-10, float32 near 1e-5 (the brief's rule; fp16/
# bf16 tests use twice PyTorch's own error against a float32 reference).
TOLERANCES = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def assert_close(actual, expected, dtype, what=""):
    torch.testing.assert_close(actual, expected, **TOLERANCES[dtype], msg=lambda m: f"{what}: {m}")


@contextlib.contextmanager
def full_fp32_math():
    """Full-precision float32 GEMMs in cuBLAS and cuDNN (no TF32) while the
    block runs. cuDNN's default allows TF32, which would make nn.LSTM on a GPU
    a ~1e-3 reference instead of a float32 one; no effect on CPU tensors."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def make_input(kind: str, T: int, B: int, I: int, batch_first: bool, dtype, device, generator):
    """A fresh leaf input that requires grad, and the function that turns it
    into the module input (called anew for each run, so that the packing is
    part of each run's graph).

    kind: "padded" ([T, B, I] or batch_first [B, T, I]), "packed" (a
    PackedSequence of B sequences with unsorted lengths in 1..T, the longest
    T), or "unbatched" ([T, I])."""
    # Drawn on the CPU (the generator's device), then moved: the same values on every device.
    if kind == "unbatched":
        leaf = torch.randn(T, I, dtype=dtype, generator=generator).to(device).requires_grad_()
        return leaf, lambda x: x
    shape = (B, T, I) if batch_first else (T, B, I)
    leaf = torch.randn(shape, dtype=dtype, generator=generator).to(device).requires_grad_()
    if kind == "padded":
        return leaf, lambda x: x
    lengths = torch.randint(1, T + 1, (B,), generator=generator)
    lengths[torch.randint(0, B, (1,), generator=generator)] = T
    return leaf, lambda x: pack_padded_sequence(x, lengths, batch_first=batch_first,
                                                enforce_sorted=False)


def forward_backward(module, leaf, to_input, hx, generator, weight_dtype=None):
    """Run module(to_input(leaf), hx), back-propagate a random weighting of every output,
    and return {name: tensor} of outputs and gradients. The weights are drawn in
    float64 and rounded to `weight_dtype` when given, so that runs in different
    dtypes can be given the same weights. GPU runs use full float32 math
    (full_fp32_math)."""
    for p in module.parameters():
        p.grad = None
    for t in (leaf, *(hx or ())):
        t.grad = None

    def weights(t):
        w = torch.randn(t.shape, dtype=torch.float64, generator=generator)
        return (w.to(weight_dtype) if weight_dtype is not None else w).to(t.device, t.dtype)

    with full_fp32_math():
        out, (h_n, c_n) = module(to_input(leaf), hx)
        data = out.data if isinstance(out, PackedSequence) else out
        loss = sum((t * weights(t)).sum() for t in (data, h_n, c_n))
        loss.backward()
    result = {"output": data, "h_n": h_n, "c_n": c_n, "grad_input": leaf.grad}
    if hx is not None:
        result.update(grad_h0=hx[0].grad, grad_c0=hx[1].grad)
    result.update({f"grad_{name}": p.grad for name, p in module.named_parameters()})
    return result


# --- samples of the ops' arguments ---------------------------------------------------------

OP_HIDDEN, OP_PROJ, OP_BATCH = 5, 3, 4
OP_LENGTHS = [6, 4, 4, 1]  # packed sample: batch_sizes [4, 3, 3, 3, 1, 1]

LAYER_CONFIGS = list(itertools.product(["dense", "packed"], [False, True], [False, True]))
LAYER_IDS = [f"{layout}-{'proj' if p else 'noproj'}-{'rev' if r else 'fwd'}"
             for layout, p, r in LAYER_CONFIGS]


def batch_sizes_of(lengths):
    return torch.tensor([sum(n > t for n in lengths) for t in range(max(lengths))], dtype=torch.long)


def layer_sample(layout, proj, reverse, dtype=torch.float64, device="cpu", seed=0,
                 hidden=OP_HIDDEN, proj_size=OP_PROJ):
    """(x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse) for lstm_layer_fwd: dense
    [6, OP_BATCH, 4H] or packed by OP_LENGTHS. Drawn on the CPU, then moved to
    `device`; batch_sizes stays on the CPU."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(shape, dtype=dtype, generator=g).to(device)

    H, B = hidden, OP_BATCH
    out = proj_size if proj else H
    if layout == "dense":
        x_proj, batch_sizes = rand(6, B, 4 * H), None
    else:
        batch_sizes = batch_sizes_of(OP_LENGTHS)
        x_proj = rand(int(batch_sizes.sum()), 4 * H)
    return (x_proj, rand(4 * H, out), rand(B, out), rand(B, H), rand(out, H) if proj else None,
            batch_sizes, reverse)


def cell_sample(dtype=torch.float64, device="cpu", seed=0, hidden=OP_HIDDEN):
    """(gates [OP_BATCH, 4H], c_prev [OP_BATCH, H]) for lstm_cell_fwd."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(OP_BATCH, 4 * hidden, dtype=dtype, generator=g).to(device),
            torch.randn(OP_BATCH, hidden, dtype=dtype, generator=g).to(device))


def grads_like(outputs, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, dtype=t.dtype, generator=g).to(t.device) for t in outputs]


@functools.lru_cache(maxsize=None)
def opcheck_samples(device="cpu"):
    """{id: (op name, args)} for every op of the contract over the layer
    configurations, float64 on `device` (cached: built once per device)."""
    samples = {}
    gates, c_prev = cell_sample(device=device)
    h, c, act = reference.lstm_cell_fwd(gates, c_prev)
    samples["cell_fwd"] = ("lstm_cell_fwd", (gates.clone().requires_grad_(), c_prev.clone().requires_grad_()))
    samples["cell_bwd"] = ("lstm_cell_bwd", (*grads_like((h, c), 5), act, c_prev, c))
    for (layout, proj, reverse), config_id in zip(LAYER_CONFIGS, LAYER_IDS):
        args = layer_sample(layout, proj, reverse, device=device)
        grad_args = tuple(t.clone().requires_grad_() if isinstance(t, torch.Tensor) and t.is_floating_point()
                          else t for t in args)
        samples[f"layer_fwd-{config_id}-train"] = ("lstm_layer_fwd", (*grad_args, True))
        samples[f"layer_fwd-{config_id}-infer"] = ("lstm_layer_fwd", (*args, False))  # nothing to differentiate
        out, h_n, c_n, acts, cells = reference.lstm_layer_fwd(*args)
        x_proj, w_hh, h0, c0, w_hr, batch_sizes, _ = args
        go, gh, gc = grads_like((out, h_n, c_n), 6)
        for grads, grads_id in (((go, gh, gc), "all-grads"), ((go, None, None), "none-grads")):
            samples[f"layer_bwd-{config_id}-{grads_id}"] = (
                "lstm_layer_bwd", (*grads, w_hh, h0, c0, w_hr, batch_sizes, reverse, out, acts, cells))
    return samples
