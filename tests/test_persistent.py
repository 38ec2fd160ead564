"""The persistent CUDA kernels (csrc/cuda/persistent_*), both tiers: a
thread-block cluster per batch group (exchange through distributed shared
memory), or a cooperative grid (exchange through global memory, a counter
as the barrier).

Without a GPU: their step code run by the host emulation (one CPU thread per
CTA, warps as 32-lane arrays, mma.sync from the PTX fragment tables,
distributed shared memory as peer buffers, a shared-memory race check),
through the test ops torch.ops.fusedlstm_persistent.emulate_layer_fwd /
emulate_layer_bwd, against the float64 oracle and the CPU backend over
every option of the layer ops: dense and packed input, projection, reverse
(a bidirectional layer is a forward and a reverse one), H = 13 and B = 3
beside round sizes, several shapes of either tier, float32, bfloat16 and
float16.

On a GPU (marked cuda): the layer ops with FUSEDLSTM_PERSISTENT=require (or
=grid, the grid tier only), so that a layer the kernels do not take fails
instead of silently running the per-step path, against the oracle;
CUDA-graph capture; the fallbacks.
"""

import pytest
import torch

from fusedlstm import _extension, ops, reference
from lstm_testing import (LAYER_CONFIGS, LAYER_IDS, assert_close, assert_error_at_most_twice_pytorchs, grads_like,
                          layer_sample, skip_unless_usable)

LENGTHS = (6, 4, 1)  # B = 3 sequences; packed: batch_sizes [3, 2, 2, 2, 1, 1]
FORWARD = ["output", "h_n", "c_n", "acts", "cells", "h_raw"]
BACKWARD = ["grad_x_proj", "grad_w_hh", "grad_h0", "grad_c0", "grad_w_hr"]
HALF_TYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="f16")]
# (H, P, CTAs per batch group, batch rows per group, grid tier): odd sizes
# over 1 and 2 CTAs, a round size whose 4 CTAs hold 8 units each (16 rows
# per group), and the grid tier on 3 and 5 CTAs. The C++ test
# (tests/cpp/persistent_emulation_test.cpp) runs more shapes, faster.
SHAPES = [pytest.param(13, 5, 1, 8, False, id="H13-S1"), pytest.param(13, 5, 2, 8, False, id="H13-S2"),
          pytest.param(32, 24, 4, 16, False, id="H32-S4"), pytest.param(13, 5, 3, 8, True, id="H13-S3-grid"),
          pytest.param(40, 24, 5, 8, True, id="H40-S5-grid")]


def emulation():
    if not _extension.loaded():
        pytest.skip(f"fusedlstm._C not loaded: {_extension.load_error}")
    if not hasattr(torch.ops, "fusedlstm_persistent") or not hasattr(torch.ops.fusedlstm_persistent,
                                                                       "emulate_layer_fwd"):
        pytest.skip("fusedlstm._C was built without the CUDA sources (FUSEDLSTM_CUDA=0, no nvcc or CPU-only "
                    "torch): the persistent kernels' emulation is part of them")
    return torch.ops.fusedlstm_persistent


def sample(layout, proj, reverse, dtype, H, P, device="cpu", seed=0, lengths=LENGTHS):
    """layer_sample's arguments with the weights scaled as nn.LSTM initialises
    them (1/sqrt of the input width), so that the gates do not all saturate
    and float32 rounding stays near its own size at H = 32 as at H = 5."""
    x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse = layer_sample(layout, proj, reverse, dtype, device, seed, H=H,
                                                                    P=P, lengths=lengths)
    return (x_proj, w_hh / w_hh.shape[1] ** 0.5, h0, c0, w_hr / H ** 0.5 if w_hr is not None else None, batch_sizes,
            reverse)


def backward_args(args, forward, grads):
    x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse = args
    return (*grads, w_hh, h0, c0, w_hr, batch_sizes, reverse, forward[0], *forward[3:6])


def named(values, names):
    return {n: v for n, v in zip(names, values) if v.numel() > 0}


# --- the host emulation against the oracle and the CPU backend ------------------------------

@pytest.mark.parametrize("H,P,S,NB,grid", SHAPES)
@pytest.mark.parametrize("layout,proj,reverse", LAYER_CONFIGS, ids=LAYER_IDS)
def test_emulated_float32_matches_oracle_and_cpu_backend(layout, proj, reverse, H, P, S, NB, grid):
    """float32: within 1e-5 of the float64 oracle and of the CPU backend, forward and backward."""
    em = emulation()
    args = sample(layout, proj, reverse, torch.float32, H, P)
    actual = em.emulate_layer_fwd(*args, True, S, NB, grid)
    exact = reference.lstm_layer_fwd(*double(args), True)
    cpu = ops.cpp.layer_fwd(*args, True)
    for name, a, e, c in zip(FORWARD, actual, exact, cpu):
        assert_close(a.double(), e, torch.float32, f"{name} vs float64")
        assert_close(a, c, torch.float32, f"{name} vs the CPU backend")
    grads = grads_like(cpu[:3], 4)
    bwd = backward_args(args, cpu, grads)
    actual = em.emulate_layer_bwd(*bwd, S, NB, grid)
    for name, a, e, c in zip(BACKWARD, actual, reference.lstm_layer_bwd(*double(bwd)), ops.cpp.layer_bwd(*bwd)):
        assert_close(a.double(), e, torch.float32, f"{name} vs float64")
        assert_close(a, c, torch.float32, f"{name} vs the CPU backend")


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("H,P,S,NB,grid", [SHAPES[1], SHAPES[4]])
@pytest.mark.parametrize("layout,proj,reverse", LAYER_CONFIGS, ids=LAYER_IDS)
def test_emulated_half_types_within_twice_pytorchs_error(layout, proj, reverse, H, P, S, NB, grid, dtype):
    """bfloat16 / float16: error against the float64 oracle (on the same rounded
    inputs) at most twice that of the same recurrence as PyTorch ops in the
    dtype, step by step, forward and backward (autograd); and at most twice
    the CPU backend's (float math, dtype storage, like these kernels)."""
    em = emulation()
    args = sample(layout, proj, reverse, dtype, H, P)
    check_half_precision(lambda *a: em.emulate_layer_fwd(*a, S, NB, grid),
                         lambda *a: em.emulate_layer_bwd(*a, S, NB, grid), args, dtype)
    assert_error_at_most_twice_pytorchs(named(em.emulate_layer_fwd(*args, True, S, NB, grid), FORWARD),
                                        named(ops.cpp.layer_fwd(*args, True), FORWARD),
                                        named(reference.lstm_layer_fwd(*double(args), True), FORWARD), dtype)


def double(args):
    return [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]


def check_half_precision(layer_fwd, layer_bwd, args, dtype):
    """layer_fwd / layer_bwd (the op contract's) in a 16-bit dtype: outputs and
    input gradients within twice PyTorch's own error against float64. The
    backward starts from the float64 forward's results rounded to the dtype;
    PyTorch's gradients are autograd's through pytorch_in_dtype."""
    exact = named(reference.lstm_layer_fwd(*double(args), True), FORWARD)
    theirs = named(pytorch_in_dtype(*args), FORWARD)
    assert_error_at_most_twice_pytorchs(named(layer_fwd(*args, True), FORWARD), theirs, exact, dtype)
    forward = [t.to(dtype) for t in reference.lstm_layer_fwd(*double(args), True)]
    grads = grads_like(forward[:3], 4)
    bwd = backward_args(args, forward, grads)
    exact = named(reference.lstm_layer_bwd(*double(bwd)), BACKWARD)
    leaves = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
              for a in args]
    out = pytorch_in_dtype(*leaves)
    torch.autograd.backward(out[:3], grads)
    x_proj, w_hh, h0, c0, w_hr = leaves[:5]
    theirs = named([x_proj.grad, w_hh.grad, h0.grad, c0.grad, w_hr.grad if w_hr is not None else
                    x_proj.new_empty(0)], BACKWARD)
    assert_error_at_most_twice_pytorchs(named(layer_bwd(*bwd), BACKWARD), theirs, exact, dtype)


def pytorch_in_dtype(x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse, save=True):
    """The layer forward as plain PyTorch ops in x_proj's dtype, one step at a
    time: what `PyTorch's own error` means for the layer op."""
    T = x_proj.shape[0] if batch_sizes is None else len(batch_sizes)
    sizes = [x_proj.shape[1]] * T if batch_sizes is None else batch_sizes.tolist()
    offsets = [sum(sizes[:t]) for t in range(T)]
    rows = (lambda t: x_proj[t]) if batch_sizes is None else (lambda t: x_proj[offsets[t]:offsets[t] + sizes[t]])
    h, c = h0, c0
    outs, acts, cells, raws = [None] * T, [None] * T, [None] * T, [None] * T
    for t in (reversed(range(T)) if reverse else range(T)):
        n = sizes[t]
        gates = rows(t) + h[:n] @ w_hh.t()
        i, f, g, o = gates.chunk(4, 1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_t = f * c[:n] + i * g
        h_t = o * torch.tanh(c_t)
        raws[t] = h_t
        out = h_t @ w_hr.t() if w_hr is not None else h_t
        h, c = torch.cat([out, h[n:]]), torch.cat([c_t, c[n:]])
        outs[t], acts[t], cells[t] = out, torch.cat([i, f, g, o], 1), c_t
    join = torch.stack if batch_sizes is None else torch.cat
    empty = x_proj.new_empty(0)
    return join(outs), h, c, join(acts), join(cells), join(raws) if w_hr is not None else empty


def test_emulated_inference_keeps_nothing():
    """save_for_backward=False: acts, cells and h_raw come back empty, the rest as when saving."""
    em = emulation()
    args = sample("packed", True, True, torch.float32, 13, 5)
    saved = em.emulate_layer_fwd(*args, True, 2, 8)
    inference = em.emulate_layer_fwd(*args, False, 2, 8)
    for name, a, b in zip(FORWARD[:3], inference, saved):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert all(t.numel() == 0 for t in inference[3:])


@pytest.mark.parametrize("grid", [False, True], ids=["cluster", "grid"])
def test_emulated_bidirectional_layer(grid):
    """A bidirectional layer is two calls, forward and reverse, on the same input:
    both directions against the oracle, several batch groups of 8 rows (B = 11)."""
    em = emulation()
    gen = torch.Generator().manual_seed(5)
    T, B, H = 5, 11, 16
    x_proj = [torch.randn(T, B, 4 * H, generator=gen) for _ in range(2)]
    w_hh = [torch.randn(4 * H, H, generator=gen) * 0.3 for _ in range(2)]
    h0, c0 = torch.randn(2, B, H, generator=gen), torch.randn(2, B, H, generator=gen)
    for d, reverse in enumerate((False, True)):
        args = (x_proj[d], w_hh[d], h0[d], c0[d], None, None, reverse)
        actual = em.emulate_layer_fwd(*args, True, 2, 8, grid)
        exact = reference.lstm_layer_fwd(*double(args), True)
        for name, a, e in zip(FORWARD[:5], actual, exact):
            assert_close(a.double(), e, torch.float32, f"direction {d} {name}")


def test_emulation_rejects_bad_cluster_shapes():
    em = emulation()
    args = sample("dense", False, False, torch.float32, 13, 5)
    with pytest.raises(RuntimeError, match="rows_per_cluster must be 8, 16, 24 or 32, got 12"):
        em.emulate_layer_fwd(*args, True, 2, 12)
    with pytest.raises(RuntimeError, match="cluster_size must be in 1..16, got 17"):
        em.emulate_layer_fwd(*args, True, 17, 8)
    big = sample("dense", False, False, torch.float32, 200, 5)
    with pytest.raises(RuntimeError, match="more than 64 per CTA"):
        em.emulate_layer_fwd(*big, True, 1, 8)
    with pytest.raises(RuntimeError, match="take float32, bfloat16 or float16, got Double"):
        em.emulate_layer_fwd(*sample("dense", False, False, torch.float64, 13, 5), True, 1, 8)


# --- on the GPU ---------------------------------------------------------------------------

def needs_persistent_kernels(monkeypatch):
    """A GPU with the CUDA kernels, and every layer op call of the test on the
    persistent kernels (an error where they do not take it)."""
    skip_unless_usable("cuda", "cuda")
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) != (9, 0):
        pytest.skip(f"the persistent kernels run on sm_90 only; this GPU is sm_{major}{minor}")
    monkeypatch.setenv("FUSEDLSTM_PERSISTENT", "require")


# (H, B, FUSEDLSTM_PERSISTENT): each cluster shape the tier picks (1, 2, 4, 8
# and 16 CTAs; one and several clusters), a layer beyond any cluster (the
# grid tier, several groups), and the grid tier forced at cluster sizes.
GPU_SIZES = [pytest.param(13, 3, "require", id="H13-B3"), pytest.param(64, 8, "require", id="H64-B8"),
             pytest.param(128, 8, "require", id="H128-B8"), pytest.param(256, 40, "require", id="H256-B40"),
             pytest.param(512, 8, "require", id="H512-B8"), pytest.param(1000, 40, "require", id="H1000-B40"),
             pytest.param(64, 8, "grid", id="H64-B8-grid"), pytest.param(256, 40, "grid", id="H256-B40-grid")]


@pytest.mark.cuda
@pytest.mark.parametrize("H,B,tier", GPU_SIZES)
@pytest.mark.parametrize("layout,proj,reverse", LAYER_CONFIGS, ids=LAYER_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, *HALF_TYPES], ids=["f32", "bf16", "f16"])
def test_gpu_layer_ops_match_oracle(layout, proj, reverse, dtype, H, B, tier, monkeypatch):
    """The layer ops on the persistent kernels, short T, against float64:
    float32 within 1e-5 (IEEE FFMA, no TF32), 16-bit types within twice
    PyTorch's own error. "require": the tier the selection picks (float32 at
    H = 512 is beyond a cluster: the grid tier); "grid": the grid tier."""
    needs_persistent_kernels(monkeypatch)
    monkeypatch.setenv("FUSEDLSTM_PERSISTENT", tier)
    lengths = tuple(max(1, 5 - b % 5) for b in range(B))
    P = max(1, H // 2) if proj else H
    args = sample(layout, proj, reverse, dtype, H, P, "cuda", lengths=lengths)
    if dtype != torch.float32:
        check_half_precision(ops.cpp.layer_fwd, ops.cpp.layer_bwd, args, dtype)
        return
    for name, a, e in zip(FORWARD, ops.cpp.layer_fwd(*args, True), reference.lstm_layer_fwd(*double(args), True)):
        assert_close(a.double(), e, torch.float32, name)
    forward = ops.cpp.layer_fwd(*args, True)
    bwd = backward_args(args, forward, grads_like(forward[:3], 4))
    for name, a, e in zip(BACKWARD, ops.cpp.layer_bwd(*bwd), reference.lstm_layer_bwd(*double(bwd))):
        assert_close(a.double(), e, torch.float32, name)


@pytest.mark.cuda
def test_gpu_graph_capture_replays_persistent_kernels(monkeypatch):
    """Dense input: the forward and backward ops captured in a CUDA graph (no
    host sync, no allocation in the launch) replay to the eager results."""
    needs_persistent_kernels(monkeypatch)
    args = sample("dense", True, False, torch.float32, 64, 32, "cuda", lengths=(5,) * 8)
    static = [a.clone() if isinstance(a, torch.Tensor) and a.is_cuda else a for a in args]
    eager = ops.cpp.layer_fwd(*static, True)
    grads = grads_like(eager[:3], 4)
    eager_bwd = ops.cpp.layer_bwd(*backward_args(static, eager, grads))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: occupancy queries, kernel attributes
        ops.cpp.layer_bwd(*backward_args(static, ops.cpp.layer_fwd(*static, True), grads))
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.cpp.layer_fwd(*static, True)
        out_bwd = ops.cpp.layer_bwd(*backward_args(static, out, grads))
    static[0].copy_(args[0] * 0.5)  # new input, then replay
    graph.replay()
    expected = ops.cpp.layer_fwd(*static, True)
    for name, a, e in zip(FORWARD, out, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0, msg=name)
    expected_bwd = ops.cpp.layer_bwd(*backward_args(static, expected, grads))
    for name, a, e in zip(BACKWARD, out_bwd, expected_bwd):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6, msg=name)
    assert not torch.equal(out[0], eager[0]) and eager_bwd[0].shape == out_bwd[0].shape


@pytest.mark.cuda
def test_gpu_packed_input_under_capture_takes_the_per_step_path(monkeypatch):
    """Packed input while capturing: the step table would be a host copy in the
    graph, so the per-step path runs; FUSEDLSTM_PERSISTENT=require says so."""
    needs_persistent_kernels(monkeypatch)
    args = sample("packed", False, False, torch.float32, 64, 64, "cuda")
    ops.cpp.layer_fwd(*args, True)  # eager: taken
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="packed input while the stream is being captured"):
        with torch.cuda.graph(graph):
            ops.cpp.layer_fwd(*args, True)
    monkeypatch.setenv("FUSEDLSTM_PERSISTENT", "1")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.cpp.layer_fwd(*args, True)
    graph.replay()
    assert_close(out[0].double(), reference.lstm_layer_fwd(*double(args))[0], torch.float32, "output")


@pytest.mark.cuda
def test_gpu_float64_stays_on_the_per_step_path(monkeypatch):
    needs_persistent_kernels(monkeypatch)
    args = sample("dense", False, False, torch.float64, 16, 16, "cuda")
    with pytest.raises(RuntimeError, match="take float32, bfloat16 or float16, got Double"):
        ops.cpp.layer_fwd(*args, True)
    monkeypatch.setenv("FUSEDLSTM_PERSISTENT", "1")
    assert_close(ops.cpp.layer_fwd(*args, True)[0], reference.lstm_layer_fwd(*args)[0], torch.float64, "output")
