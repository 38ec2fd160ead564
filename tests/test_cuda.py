"""The CUDA backend (csrc/cuda/).

On any machine whose build compiled the CUDA kernels: all four ops have a
CUDA kernel registered. On a GPU: the kernels' vectorised and scalar paths
and their grid-stride loop against the oracle, half and bfloat16 accuracy
against PyTorch's own, CUDA-graph capture and replay, the device guard, empty
batches and bad arguments.

Also run on CUDA, from the suites parametrised over devices: the ops against
the oracle, opcheck and gradcheck (test_ops.py), and FusedLSTM /
FusedLSTMCell against nn.LSTM / nn.LSTMCell over every option, packed,
projected, reversed and bidirectional included (test_parity.py, test_cell.py).
"""

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from fusedlstm import FusedLSTM, _extension, ops, reference
from lstm_testing import (check_layer_bwd, LAYER_CONFIGS, LAYER_IDS, assert_close, assert_error_at_most_twice_pytorchs,
                          cell_sample, full_fp32_math, grads_like, layer_sample, skip_unless_usable)

HALF_TYPES = [pytest.param(torch.float16, id="f16"), pytest.param(torch.bfloat16, id="bf16")]


def needs_cuda_kernels():
    skip_unless_usable("cuda", "cuda")


# --- registration (no GPU needed) ----------------------------------------------------------

def test_cuda_kernels_registered_for_every_op():
    info = _extension.build_info
    if not _extension.loaded():
        pytest.skip(f"fusedlstm._C not loaded: {_extension.load_error}")
    if not info.CUDA_COMPILED:
        pytest.skip("fusedlstm._C was built without CUDA kernels (CPU-only torch, no nvcc, "
                    "or FUSEDLSTM_CUDA=0)")
    missing = [name for name in ops.CONTRACT
               if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedlstm::{name}", "CUDA")]
    assert missing == [], f"no CUDA kernel registered for {missing}"
    assert _extension.has_cuda_kernels()


# --- the kernels' paths against the oracle --------------------------------------------------

def misaligned(t):
    """A contiguous copy of `t` that starts one element past a 16-byte boundary,
    so that the kernels must take their scalar path."""
    buffer = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    return buffer[1:].view(t.shape).copy_(t)


# hidden 16: every dtype's 128-bit vectors fit (4 f32, 2 f64, 8 f16/bf16); 13: scalar path.
PATHS = ["vector-H16", "scalar-H13", "misaligned-H16"]


@pytest.mark.cuda
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layout,proj,reverse", LAYER_CONFIGS, ids=LAYER_IDS)
def test_layer_kernel_paths_match_reference(layout, proj, reverse, dtype, path):
    needs_cuda_kernels()
    hidden = 13 if path == "scalar-H13" else 16
    args = list(layer_sample(layout, proj, reverse, dtype, "cuda", H=hidden, P=5))
    if path == "misaligned-H16":
        args[0] = misaligned(args[0])
    actual = ops.cpp.layer_fwd(*args, True)
    expected = reference.lstm_layer_fwd(*args, True)
    for a, e, name in zip(actual, expected, ["output", "h_n", "c_n", "acts", "cells"]):
        assert_close(a, e, dtype, name)
    grads = grads_like(expected[:3], 4)
    if path == "misaligned-H16":
        grads[0] = misaligned(grads[0])
    check_layer_bwd(ops.cpp.layer_bwd, args, expected, grads, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_cell_kernel_paths_match_reference(dtype, path):
    needs_cuda_kernels()
    gates, c_prev = cell_sample(dtype, "cuda", H=13 if path == "scalar-H13" else 16)
    if path == "misaligned-H16":
        gates = misaligned(gates)
    expected = reference.lstm_cell_fwd(gates, c_prev)
    for a, e, name in zip(ops.cpp.cell_fwd(gates, c_prev), expected, ["h", "c", "act"]):
        assert_close(a, e, dtype, name)
    grad_h, grad_c = grads_like(expected[:2], 3)
    bwd_args = (grad_h, grad_c, expected[2], c_prev, expected[1])
    for a, e, name in zip(ops.cpp.cell_bwd(*bwd_args), reference.lstm_cell_bwd(*bwd_args),
                          ["grad_gates", "grad_c_prev"]):
        assert_close(a, e, dtype, name)


@pytest.mark.cuda
def test_rows_beyond_one_grid_are_covered():
    """More rows than gridDim.y (<= 65535) times the rows per block (<= 4): the
    kernels' grid-stride loop over rows, in the cell and in the layer."""
    needs_cuda_kernels()
    B, H = 300_000, 2
    g = torch.Generator().manual_seed(7)

    def rand(*shape):
        return torch.randn(shape, dtype=torch.float64, generator=g).cuda()

    gates, c_prev = rand(B, 4 * H), rand(B, H)
    for a, e in zip(ops.cpp.cell_fwd(gates, c_prev), reference.lstm_cell_fwd(gates, c_prev)):
        assert_close(a, e, torch.float64)
    args = (rand(2, B, 4 * H), rand(4 * H, H), rand(B, H), rand(B, H), None, None, False)
    expected = reference.lstm_layer_fwd(*args, True)
    for a, e in zip(ops.cpp.layer_fwd(*args, True), expected):
        assert_close(a, e, torch.float64)
    grads = grads_like(expected[:3], 8)
    bwd_args = (*grads, *args[1:], expected[0], *expected[3:6])
    for a, e in zip(ops.cpp.layer_bwd(*bwd_args), reference.lstm_layer_bwd(*bwd_args)):
        assert_close(a, e, torch.float64)


@pytest.mark.cuda
def test_empty_batch():
    needs_cuda_kernels()
    H = 6
    args = (torch.randn(4, 0, 4 * H, dtype=torch.float64, device="cuda"),
            torch.randn(4 * H, H, dtype=torch.float64, device="cuda"),
            torch.zeros(0, H, dtype=torch.float64, device="cuda"),
            torch.zeros(0, H, dtype=torch.float64, device="cuda"), None, None, False)
    actual = ops.cpp.layer_fwd(*args, True)
    expected = reference.lstm_layer_fwd(*args, True)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
    grads = (torch.zeros_like(expected[0]), None, None)
    grad_x, grad_w_hh, grad_h0, grad_c0, _ = ops.cpp.layer_bwd(*grads, *args[1:], expected[0], *expected[3:6])
    assert grad_x.shape == args[0].shape and grad_h0.shape == grad_c0.shape == (0, H)
    assert torch.equal(grad_w_hh, torch.zeros_like(args[1]))
    h, c, act = ops.cpp.cell_fwd(torch.zeros(0, 4 * H, device="cuda"), torch.zeros(0, H, device="cuda"))
    assert h.shape == c.shape == (0, H) and act.shape == (0, 4 * H)


# --- half and bfloat16: at most twice PyTorch's own error ------------------------------------

# The module-level rule runs for every backend and device in test_reduced_precision.py.

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("hidden", [16, 13])
def test_half_precision_cell_ops_within_twice_pytorch_error(dtype, hidden):
    """The cell ops in fp16/bf16 vs the same formulas as PyTorch ops in that
    dtype (the oracle), both against the oracle in float64."""
    needs_cuda_kernels()
    gates, c_prev = cell_sample(dtype, "cuda", H=hidden)
    exact = reference.lstm_cell_fwd(gates.double(), c_prev.double())
    theirs = reference.lstm_cell_fwd(gates, c_prev)
    names = ["h", "c", "act"]
    assert_error_at_most_twice_pytorchs(dict(zip(names, ops.cpp.cell_fwd(gates, c_prev))),
                                        dict(zip(names, theirs)), dict(zip(names, exact)), dtype)
    grad_h, grad_c = grads_like(theirs[:2], 3)
    args = (grad_h, grad_c, theirs[2], c_prev, theirs[1])
    exact = reference.lstm_cell_bwd(*(a.double() for a in args))
    names = ["grad_gates", "grad_c_prev"]
    assert_error_at_most_twice_pytorchs(dict(zip(names, ops.cpp.cell_bwd(*args))),
                                        dict(zip(names, reference.lstm_cell_bwd(*args))),
                                        dict(zip(names, exact)), dtype)


# --- CUDA graphs ----------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["padded", "packed"])
def test_cuda_graph_replay_matches_eager(kind):
    """Forward and backward of a FusedLSTM captured in a CUDA graph: the ops
    launch only on the current stream, allocate nothing that capture forbids
    and never synchronise; a replay on new input equals an eager run."""
    needs_cuda_kernels()
    torch.manual_seed(0)
    lstm = FusedLSTM(8, 16, num_layers=2, bidirectional=True, proj_size=4, backend="cuda",
                     device="cuda")
    gen = torch.Generator().manual_seed(1)
    T, B = 7, 5
    padded = torch.randn(T, B, 8, generator=gen)
    if kind == "packed":
        packed = pack_padded_sequence(padded, torch.tensor([7, 3, 5, 1, 7]), enforce_sorted=False)
        static_x = packed.data.cuda().requires_grad_()
        batch_sizes = packed.batch_sizes
        sorted_indices, unsorted_indices = packed.sorted_indices.cuda(), packed.unsorted_indices.cuda()

        def module_input(x):
            return PackedSequence(x, batch_sizes, sorted_indices, unsorted_indices)
    else:
        static_x = padded.cuda().requires_grad_()

        def module_input(x):
            return x
    out_rows = static_x.shape[:-1]
    weights = [torch.randn(shape, generator=gen).cuda()
               for shape in ((*out_rows, 8), (4, B, 4), (4, B, 16))]

    def step():
        out, (h_n, c_n) = lstm(module_input(static_x))
        data = out.data if kind == "packed" else out
        loss = sum((t * w).sum() for t, w in zip((data, h_n, c_n), weights))
        loss.backward()
        return data, h_n, c_n

    def clear_grads():
        static_x.grad = None
        for p in lstm.parameters():
            p.grad = None

    with full_fp32_math():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (cuBLAS handles, workspaces) off the default stream
            for _ in range(3):
                clear_grads()
                step()
        torch.cuda.current_stream().wait_stream(side)
        clear_grads()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_results = step()

        with torch.no_grad():
            static_x.copy_(torch.randn(static_x.shape, generator=gen))
        graph.replay()
        torch.cuda.synchronize()
        replayed = [t.clone() for t in static_results]
        replayed += [static_x.grad.clone()] + [p.grad.clone() for p in lstm.parameters()]

        clear_grads()
        eager = list(step()) + [static_x.grad] + [p.grad for p in lstm.parameters()]
    assert len(replayed) == len(eager)
    for k, (a, e) in enumerate(zip(replayed, eager)):
        assert_close(a, e, torch.float32, f"result {k}")


# --- devices and bad arguments --------------------------------------------------------------

@pytest.mark.cuda
def test_runs_on_the_tensors_gpu_not_the_current_one():
    needs_cuda_kernels()
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    args = layer_sample("packed", True, True, device="cuda:1")
    with torch.cuda.device(0):
        actual = ops.cpp.layer_fwd(*args, True)
    expected = reference.lstm_layer_fwd(*args, True)
    for a, e in zip(actual, expected):
        assert a.device == torch.device("cuda:1")
        assert_close(a, e, torch.float64)


@pytest.mark.cuda
def test_mixed_devices_are_rejected():
    needs_cuda_kernels()
    gates, c_prev = cell_sample(device="cuda")
    with pytest.raises(RuntimeError, match="c_prev must be on cuda:0 like gates, got cpu"):
        ops.cpp.cell_fwd(gates, c_prev.cpu())
    x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse = layer_sample("dense", False, False, device="cuda")
    with pytest.raises(RuntimeError, match="w_hh must be on cuda:0 like x_proj, got cpu"):
        ops.cpp.layer_fwd(x_proj, w_hh.cpu(), h0, c0, w_hr, batch_sizes, reverse, False)


@pytest.mark.cuda
def test_batch_sizes_on_the_gpu_are_rejected():
    needs_cuda_kernels()
    x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse = layer_sample("packed", False, False, device="cuda")
    with pytest.raises(RuntimeError, match="batch_sizes must be a 1-D int64 CPU tensor"):
        ops.cpp.layer_fwd(x_proj, w_hh, h0, c0, w_hr, batch_sizes.cuda(), reverse, False)
