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

from fusedlstm import FusedLSTM, backends, reference

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


# Tolerances: float64 near 1e-10, float32 near 1e-5. fp16/bf16, and float32 on
# a GPU, are judged instead by error against float64: at most twice PyTorch's own
# (assert_error_at_most_twice_pytorchs).
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

LENGTHS = (6, 4, 4, 1)  # the packed sample's sequences: batch_sizes [4, 3, 3, 3, 1, 1]

LAYER_CONFIGS = list(itertools.product(["dense", "packed"], [False, True], [False, True]))
LAYER_IDS = [f"{layout}-{'proj' if p else 'noproj'}-{'rev' if r else 'fwd'}"
             for layout, p, r in LAYER_CONFIGS]


def batch_sizes_of(lengths):
    return torch.tensor([sum(n > t for n in lengths) for t in range(max(lengths))], dtype=torch.long)


def layer_sample(layout, proj, reverse, dtype=torch.float64, device="cpu", seed=0, *, H=5, P=3,
                 lengths=LENGTHS):
    """(x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse) for lstm_layer_fwd: B = len(lengths)
    sequences, T = max(lengths) steps; dense ("dense") or packed with those lengths
    ("packed"); output size P with a projection, else H. Drawn on the CPU, then moved
    to `device`; batch_sizes stays on the CPU."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(shape, dtype=dtype, generator=g).to(device)

    B, out = len(lengths), P if proj else H
    if layout == "dense":
        x_proj, batch_sizes = rand(max(lengths), B, 4 * H), None
    else:
        batch_sizes = batch_sizes_of(lengths)
        x_proj = rand(int(batch_sizes.sum()), 4 * H)
    return (x_proj, rand(4 * H, out), rand(B, out), rand(B, H), rand(out, H) if proj else None,
            batch_sizes, reverse)


def cell_sample(dtype=torch.float64, device="cpu", seed=0, *, B=4, H=5):
    """(gates [B, 4H], c_prev [B, H]) for lstm_cell_fwd."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 4 * H, dtype=dtype, generator=g).to(device),
            torch.randn(B, H, dtype=dtype, generator=g).to(device))


def grads_like(outputs, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, dtype=t.dtype, generator=g).to(t.device) for t in outputs]


LAYER_GRADS = ["grad_x_proj", "grad_w_hh", "grad_h0", "grad_c0", "grad_w_hr"]


def check_layer_bwd(layer_bwd, args, forward, grads, dtype):
    """A backend's layer_bwd against the oracle's, given the layer's arguments
    `args` (as from layer_sample), its forward results `forward` (output, h_n,
    c_n, acts, cells, h_raw) and the gradients (grad_output, grad_h_n, grad_c_n)."""
    x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse = args
    bwd_args = (*grads, w_hh, h0, c0, w_hr, batch_sizes, reverse, forward[0], *forward[3:6])
    for a, e, name in zip(layer_bwd(*bwd_args), reference.lstm_layer_bwd(*bwd_args), LAYER_GRADS):
        assert_close(a, e, dtype, name)


@functools.lru_cache(maxsize=None)
def opcheck_samples(device="cpu", dtype=torch.float64):
    """{id: (op name, args)} for every op of the contract over the layer
    configurations, in `dtype` on `device` (cached: built once per pair)."""
    samples = {}
    gates, c_prev = cell_sample(dtype, device)
    h, c, act = reference.lstm_cell_fwd(gates, c_prev)
    samples["cell_fwd"] = ("lstm_cell_fwd", (gates.clone().requires_grad_(), c_prev.clone().requires_grad_()))
    samples["cell_bwd"] = ("lstm_cell_bwd", (*grads_like((h, c), 5), act, c_prev, c))
    for (layout, proj, reverse), config_id in zip(LAYER_CONFIGS, LAYER_IDS):
        args = layer_sample(layout, proj, reverse, dtype, device)
        grad_args = tuple(t.clone().requires_grad_() if isinstance(t, torch.Tensor) and t.is_floating_point()
                          else t for t in args)
        samples[f"layer_fwd-{config_id}-train"] = ("lstm_layer_fwd", (*grad_args, True))
        samples[f"layer_fwd-{config_id}-infer"] = ("lstm_layer_fwd", (*args, False))  # nothing to differentiate
        out, h_n, c_n, acts, cells, h_raw = reference.lstm_layer_fwd(*args)
        x_proj, w_hh, h0, c0, w_hr, batch_sizes, _ = args
        go, gh, gc = grads_like((out, h_n, c_n), 6)
        for grads, grads_id in (((go, gh, gc), "all-grads"), ((go, None, None), "none-grads")):
            samples[f"layer_bwd-{config_id}-{grads_id}"] = (
                "lstm_layer_bwd", (*grads, w_hh, h0, c0, w_hr, batch_sizes, reverse, out, acts, cells, h_raw))
    return samples


# --- float16 / bfloat16: at most twice PyTorch's own error ------------------------------------

def skip_unless_rounding_matches(backend: str, device: str, dtype) -> None:
    """Skip bfloat16 under the Triton interpreter: it converts float32 to bfloat16 by
    truncation (Triton 3.8), where GPUs round to nearest, so its bfloat16 results are not
    the kernels' (layer gradients with up to 6x PyTorch's error were seen). The CUDA
    tests run bfloat16 on the compiled kernels."""
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter rounds float32 to bfloat16 by truncation, unlike GPUs")


def max_errors(results: dict, exact: dict) -> dict:
    return {name: (value.double() - exact[name].double()).abs().max().item() for name, value in results.items()}


def assert_error_at_most_twice_pytorchs(ours: dict, theirs: dict, exact: dict, dtype) -> None:
    """For each result: our largest error against `exact` (float64 on the same rounded
    inputs) is at most twice PyTorch's (`theirs`, computed in `dtype`), or a floor below
    which both are noise: one unit of the format near 1 for float16 / bfloat16, and the
    float32 tolerance (1e-5) for float32."""
    ours, theirs = max_errors(ours, exact), max_errors(theirs, exact)
    floor = TOLERANCES[dtype]["atol"] if dtype == torch.float32 else torch.finfo(dtype).eps
    for name in exact:
        assert ours[name] <= max(2 * theirs[name], floor), (
            f"{name}: error {ours[name]:.3g} vs PyTorch's {theirs[name]:.3g}")


def check_reduced_precision(backend: str, device: str, dtype, kind: str, proj_size: int, *, T=12, B=5,
                            I=24, H=40):
    """FusedLSTM(backend) and nn.LSTM, both in `dtype` with the same (rounded) weights and
    inputs, against nn.LSTM in float64 on those same rounded values, so that only
    arithmetic error is compared (flash-attention's rule): outputs and every gradient."""
    gen = torch.Generator().manual_seed(21)
    config = dict(num_layers=2, bidirectional=True, proj_size=proj_size)
    with torch.random.fork_rng(devices=[]):  # the same weights whatever ran before
        torch.manual_seed(22)
        low = torch.nn.LSTM(I, H, **config, dtype=dtype).to(device)
    exact = torch.nn.LSTM(I, H, **config, dtype=torch.float64).to(device)
    exact.load_state_dict({k: v.double() for k, v in low.state_dict().items()})
    fused = FusedLSTM.from_lstm(low, backend=backend)

    leaf, to_input = make_input(kind, T, B, I, False, dtype, device, gen)
    leaf64 = leaf.detach().double().requires_grad_()
    reference = forward_backward(exact, leaf64, to_input, None, torch.Generator().manual_seed(3), dtype)
    # Same loss weights in every run: drawn in float64, rounded for the low runs.
    theirs = forward_backward(low, leaf, to_input, None, torch.Generator().manual_seed(3))
    ours = forward_backward(fused, leaf, to_input, None, torch.Generator().manual_seed(3))
    assert_error_at_most_twice_pytorchs(ours, theirs, reference, dtype)
