"""The Triton backend: its cell kernels and its three layer implementations
(per-step, persistent, streamed) against the reference oracle and nn.LSTM;
the layer ops' choice among them; the ops' registration and tracing; the
kernels compiled for sm_90 without a GPU; and the same at real sizes on a GPU.

Without a GPU these run through Triton's interpreter on CPU tensors
(tests/conftest.py sets TRITON_INTERPRET=1 there), so shapes stay small. The
parity suite (test_parity.py, test_cell.py) runs FusedLSTM with
backend="triton" as well."""

import contextlib
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

from fusedlstm import FusedLSTM, backends, ops, plan, reference  # noqa: E402
from fusedlstm.triton import cell, launch, layer, one_launch, ops as triton_ops, persistent, streamed  # noqa: E402
from fusedlstm.triton.cell import tile_offsets  # noqa: E402
from fusedlstm.triton.steps import Steps, entry_rows, plan_entry  # noqa: E402
from fusedlstm.triton.streamed import half  # noqa: E402
from lstm_testing import (LAYER_CONFIGS, LAYER_IDS, assert_close, assert_error_at_most_twice_pytorchs,  # noqa: E402
                          cell_sample, check_reduced_precision, forward_backward, grads_like, layer_sample,
                          make_input, opcheck_samples, skip_unless_rounding_matches, skip_unless_usable)

OPS = triton_ops.OPS
TRITON_OPS = dict(zip(ops.CONTRACT, (OPS.cell_fwd, OPS.cell_bwd, OPS.layer_fwd, OPS.layer_bwd)))
LOW_PRECISION = [torch.bfloat16, torch.float16]


@pytest.fixture
def on_cpu():
    skip_unless_usable("triton", "cpu")


@pytest.fixture
def on_cuda():
    skip_unless_usable("triton", "cuda")


def low(args, dtype):
    """The floating tensors of `args` in `dtype` (others unchanged)."""
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


# The layer implementations, called directly (the layer ops pick one).
IMPLEMENTATIONS = {
    "per-step": (layer.lstm_layer_fwd, layer.lstm_layer_bwd),
    "persistent": (persistent.lstm_persistent_fwd, persistent.lstm_persistent_bwd),
    "streamed": (streamed.lstm_streamed_fwd, streamed.lstm_streamed_bwd),
}


def steps_of(x_proj, h0, batch_sizes, reverse):
    T = x_proj.shape[0] if batch_sizes is None else batch_sizes.shape[0]
    return Steps(batch_sizes, T, h0.shape[0], x_proj.shape[0] if batch_sizes is not None else T * h0.shape[0],
                 reverse, x_proj.device)


def run_layer(implementation, args, save=True, grads=None):
    """Forward (and, given grads, backward) of one implementation on layer_sample args."""
    fwd, bwd = IMPLEMENTATIONS[implementation]
    x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse = args
    steps = steps_of(x_proj, h0, batch_sizes, reverse)
    out = fwd(x_proj, w_hh, h0, c0, w_hr, steps, save)
    if grads is None:
        return out
    output, _, _, acts, cells, h_raw = out
    return out, bwd(*grads, w_hh, h0, c0, w_hr, steps, output, acts, cells, h_raw)


FWD_NAMES = ["output", "h_n", "c_n", "acts", "cells", "h_raw"]
BWD_NAMES = ["grad_x_proj", "grad_w_hh", "grad_h0", "grad_c0", "grad_w_hr"]


def reference_layer(args, grads):
    fwd = reference.lstm_layer_fwd(*args, True)
    x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse = args
    bwd = reference.lstm_layer_bwd(*grads, w_hh, h0, c0, w_hr, batch_sizes, reverse, fwd[0], *fwd[3:6])
    return fwd, bwd


def compare_layer(actual, expected, dtype):
    (a_fwd, a_bwd), (e_fwd, e_bwd) = actual, expected
    for a, e, name in zip(a_fwd, e_fwd, FWD_NAMES):
        assert_close(a, e, dtype, name)
    for a, e, name in zip(a_bwd, e_bwd, BWD_NAMES):
        if name == "grad_w_hr" and e.numel() == 0:
            assert a is None, "grad_w_hr without a projection"
        else:
            assert_close(a, e, dtype, name)


# --- the cell kernels --------------------------------------------------------------------

CELL_SHAPES = [(3, 13), (4, 5), (2, 130)]  # H = 130: two programs along the hidden units


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("B,H", CELL_SHAPES, ids=[f"B{b}-H{h}" for b, h in CELL_SHAPES])
def test_cell_matches_reference(on_cpu, dtype, B, H):
    gates, c_prev = cell_sample(dtype, B=B, H=H)
    expected = reference.lstm_cell_fwd(gates, c_prev)
    for a, e, name in zip(OPS.cell_fwd(gates, c_prev), expected, ["h", "c", "act"]):
        assert_close(a, e, dtype, name)
    grad_h, grad_c = grads_like(expected[:2], 1)
    _, c, act = expected
    for a, e, name in zip(OPS.cell_bwd(grad_h, grad_c, act, c_prev, c),
                          reference.lstm_cell_bwd(grad_h, grad_c, act, c_prev, c),
                          ["grad_gates", "grad_c_prev"]):
        assert_close(a, e, dtype, name)


def test_cell_accepts_strided_inputs(on_cpu):
    gates, c_prev = cell_sample(B=6, H=13)
    h, c, act = OPS.cell_fwd(gates[::2], c_prev.t().contiguous().t()[::2])
    expected = reference.lstm_cell_fwd(gates[::2], c_prev[::2])
    for a, e in zip((h, c, act), expected):
        assert_close(a, e, torch.float64)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["bf16", "f16"])
def test_cell_low_precision(on_cpu, dtype):
    """Twice the error of the oracle run in `dtype` (which computes in float32 and rounds
    its results, as the kernels do) against float64 on the same rounded inputs."""
    skip_unless_rounding_matches("triton", "cpu", dtype)
    gates, c_prev = low(cell_sample(B=3, H=13), dtype)
    names = ["h", "c", "act"]
    exact = dict(zip(names, reference.lstm_cell_fwd(gates.double(), c_prev.double())))
    theirs = dict(zip(names, reference.lstm_cell_fwd(gates, c_prev)))
    ours = dict(zip(names, OPS.cell_fwd(gates, c_prev)))
    assert all(t.dtype == dtype for t in ours.values())
    assert_error_at_most_twice_pytorchs(ours, theirs, exact, dtype)


def test_cell_rows_on_device_leave_other_rows(on_cpu):
    """With `rows`, rows b >= the plan entry's rows are not written forward, and get zero gate
    gradients backward while keeping their dc (what the packed layer relies on)."""
    gates, c_prev = cell_sample(B=4, H=5)
    sizes, taking_part = plan.layer_plan(torch.tensor([4, 2]), 2, 4, False), slice(0, 2)  # entry 1: 2 rows
    c_state, act, h = c_prev.clone(), torch.full_like(gates, 7.0), torch.full_like(c_prev, 7.0)
    cell.lstm_cell_fwd(gates, c_state, out=(act, c_state, h), rows=(sizes, 1))
    h_ref, c_ref, act_ref = reference.lstm_cell_fwd(gates, c_prev)
    for a, e, name in ((h, h_ref, "h"), (c_state, c_ref, "c"), (act, act_ref, "act")):
        assert_close(a[taking_part], e[taking_part], torch.float64, name)
    assert torch.equal(c_state[2:], c_prev[2:]), "c of the other rows changed"
    assert torch.equal(h[2:], torch.full_like(h[2:], 7.0)) and torch.equal(act[2:], torch.full_like(act[2:], 7.0))

    grad_h, grad_c = grads_like((h, c_state), 2)
    dc = grad_c.clone()
    d_gates, _ = cell.lstm_cell_bwd(grad_h, dc, act_ref, c_prev, c_ref, out=(torch.empty_like(gates), dc),
                                    rows=(sizes, 1))
    d_ref, dc_ref = reference.lstm_cell_bwd(grad_h, grad_c, act_ref, c_prev, c_ref)
    assert_close(d_gates[taking_part], d_ref[taking_part], torch.float64, "grad_gates")
    assert_close(dc[taking_part], dc_ref[taking_part], torch.float64, "grad_c_prev")
    assert torch.equal(d_gates[2:], torch.zeros_like(d_gates[2:]))
    assert torch.equal(dc[2:], grad_c[2:])


# --- the layer implementations ----------------------------------------------------------

@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layout,proj,reverse", LAYER_CONFIGS, ids=LAYER_IDS)
def test_layer_matches_reference(on_cpu, implementation, dtype, layout, proj, reverse):
    args = layer_sample(layout, proj, reverse, dtype)
    grads = grads_like(reference.lstm_layer_fwd(*args)[:3], 4)
    compare_layer(run_layer(implementation, args, grads=grads), reference_layer(args, grads), dtype)


# Odd sizes: 19 sequences (two programs of the persistent kernel, the second
# partly masked), H = 13 and P = 7 (tiles padded to 16), packed lengths unsorted
# in time (the layout is sorted by construction of batch_sizes).
ODD_LENGTHS = (5, 5, 4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1)


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("layout,proj,reverse", [("packed", True, True), ("packed", False, False),
                                                 ("dense", True, False)], ids=["packed-proj-rev",
                                                                               "packed-noproj-fwd",
                                                                               "dense-proj-fwd"])
def test_layer_odd_sizes(on_cpu, implementation, layout, proj, reverse):
    args = layer_sample(layout, proj, reverse, H=13, P=7, lengths=ODD_LENGTHS)
    grads = grads_like(reference.lstm_layer_fwd(*args)[:3], 5)
    compare_layer(run_layer(implementation, args, grads=grads), reference_layer(args, grads), torch.float64)


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("layout,proj,reverse", LAYER_CONFIGS, ids=LAYER_IDS)
def test_layer_missing_grads_and_no_saving(on_cpu, implementation, layout, proj, reverse):
    """grad_h_n / grad_c_n None count as zeros; save_for_backward=False gives the
    same results and empty acts / cells / h_raw."""
    args = layer_sample(layout, proj, reverse)
    grads = [grads_like(reference.lstm_layer_fwd(*args)[:1], 6)[0], None, None]
    compare_layer(run_layer(implementation, args, grads=grads), reference_layer(args, grads), torch.float64)
    saved, unsaved = run_layer(implementation, args), run_layer(implementation, args, save=False)
    for a, e, name in zip(unsaved[:3], saved[:3], FWD_NAMES):
        assert_close(a, e, torch.float64, name)
    assert unsaved[3].numel() == unsaved[4].numel() == unsaved[5].numel() == 0


def poisoning(wrap, inputs):
    """A stand-in for a launcher module's wrap_triton that fills every floating
    tensor argument sharing no storage with `inputs` (so: a buffer the launcher
    allocated) with NaN before the kernel runs."""
    theirs = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}

    def poison(args):
        for a in args:
            if (isinstance(a, torch.Tensor) and a.is_floating_point()
                    and a.untyped_storage().data_ptr() not in theirs):
                a.fill_(float("nan"))

    class Launcher:
        def __init__(self, kernel):
            self.launch = wrap(kernel)

        def __getitem__(self, grid):
            def run(*args, **kwargs):
                poison([*args, *kwargs.values()])
                return self.launch[grid](*args, **kwargs)
            return run

    return Launcher


@pytest.mark.parametrize("implementation", ["persistent", "streamed"])
@pytest.mark.parametrize("grads_given", [True, False], ids=["grads", "no-state-grads"])
@pytest.mark.parametrize("layout,proj,reverse", LAYER_CONFIGS, ids=LAYER_IDS)
def test_one_launch_kernels_set_every_buffer_they_write(on_cpu, monkeypatch, implementation, grads_given,
                                                        layout, proj, reverse):
    """The one-launch kernels read their inputs (h0, c0, grad_h_n, grad_c_n included)
    and write only buffers their launcher allocates, which they set before reading:
    with those buffers filled with NaN beforehand, every result is bit-for-bit the
    same. A buffer set on the host from an input (a clone of hx[index]) instead
    gave wrong results under torch.compile in torch 2.11 (streamed.py, "Initial
    state")."""
    args = layer_sample(layout, proj, reverse, torch.float32)
    x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse = args
    grads = grads_like(reference.lstm_layer_fwd(*args)[:3], 4)
    if not grads_given:
        grads[1:] = [None, None]
    fwd, bwd = IMPLEMENTATIONS[implementation]
    steps = steps_of(x_proj, h0, batch_sizes, reverse)
    module = one_launch  # where both kernels are launched

    saved = (0, 3, 4, 5)  # output, acts, cells, h_raw: the backward's inputs from the forward
    clean_fwd = fwd(x_proj, w_hh, h0, c0, w_hr, steps, True)
    clean_bwd = bwd(*grads, w_hh, h0, c0, w_hr, steps, *(clean_fwd[i] for i in saved))
    monkeypatch.setattr(module, "wrap_triton", poisoning(module.wrap_triton, [*args, *grads, *clean_fwd]))
    poisoned_fwd = fwd(x_proj, w_hh, h0, c0, w_hr, steps, True)
    poisoned_bwd = bwd(*grads, w_hh, h0, c0, w_hr, steps, *(clean_fwd[i] for i in saved))
    for name, a, e in [*zip(FWD_NAMES, poisoned_fwd, clean_fwd), *zip(BWD_NAMES, poisoned_bwd, clean_bwd)]:
        if e is None:
            assert a is None, name
        else:
            assert torch.equal(a, e), f"{name} depends on what a launcher-made buffer held"


# --- the layer plan on the device, int64 offsets, the device guard ---------------------------

@triton.jit
def _read_plan_kernel(plan_ptr, out_ptr, T, B, REVERSE: tl.constexpr, PACKED: tl.constexpr):
    for k in range(T):
        offset, rows, continuing, prev_offset = plan_entry(plan_ptr, k, T, B, REVERSE, PACKED)
        tl.store(out_ptr + 4 * k, offset)
        tl.store(out_ptr + 4 * k + 1, rows)
        tl.store(out_ptr + 4 * k + 2, continuing)
        tl.store(out_ptr + 4 * k + 3, prev_offset)


BIG = 2**31 - 1
PLAN_CASES = {  # (batch_sizes, T, B): dense ones are computed in the kernels, packed ones read from the table
    "dense": (None, 4, 3), "dense-T1": (None, 1, 5), "dense-past-int32": (None, 5, 2**30 + 3),
    "packed": (torch.tensor([3, 2, 2, 1]), 4, 3), "packed-past-int32": (torch.tensor([BIG, BIG, 4]), 3, BIG),
}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("case", list(PLAN_CASES))
def test_kernels_read_the_plan(on_cpu, case, reverse):
    """steps.plan_entry, the kernels' reader of the plan, gives the builder's entries
    (fusedlstm::layer_plan), for dense input too, where it computes them, with offsets
    past 2^31 rows in int64."""
    batch_sizes, T, B = PLAN_CASES[case]
    table = plan.layer_plan(batch_sizes, T, B, reverse)
    read = torch.full((T, 4), -1, dtype=torch.int64)
    _read_plan_kernel[(1,)](table if batch_sizes is not None else None, read, T, B, REVERSE=reverse,
                            PACKED=batch_sizes is not None)
    assert torch.equal(read, table)


@triton.jit
def _offsets_kernel(plan_ptr, out_ptr, k, T, B, H, first_row, PACKED: tl.constexpr):
    b = tl.arange(0, 4).to(tl.int64)                       # batch rows, as the one-launch kernels have them
    four = tl.arange(0, 4)
    row, active, row_prev, continues = entry_rows(plan_ptr, k, b, T, B, False, PACKED)
    tl.store(out_ptr + four, row)
    tl.store(out_ptr + 4 + four, row_prev)
    tl.store(out_ptr + 8 + four, active.to(tl.int64))
    tl.store(out_ptr + 12 + four, continues.to(tl.int64))
    rows = first_row + four                                 # the cell kernels' rows: int32
    gate, state = tile_offsets(rows, tl.arange(0, 2), H)    # [4, 2]
    at = four[:, None] * 2 + tl.arange(0, 2)[None, :]
    tl.store(out_ptr + 16 + at, gate)
    tl.store(out_ptr + 24 + at, state)
    tl.store(out_ptr + 32, half(k + 1, B, H))


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_offset_helpers_past_int32(on_cpu, packed):
    """The kernels' element offsets that grow with the number of rows are int64 and do
    not wrap past 2^31 elements (nothing that size is allocated): rows of a plan entry
    (one-launch kernels), rows * 4H and rows * H (cell kernels), a double buffer's half
    (streamed kernel). The interpreter wraps int32 arithmetic as a GPU does."""
    B, T, k, H, first_row = 2**30 + 3, 3, 2, 1024, 2**28
    batch_sizes = torch.tensor([B, B, 3]) if packed else None
    table = plan.layer_plan(batch_sizes, T, B, False)
    out = torch.zeros(33, dtype=torch.int64)
    _offsets_kernel[(1,)](table if packed else None, out, k, T, B, H, first_row, PACKED=packed)
    offset, rows, continuing, prev_offset = table[k].tolist()
    b = torch.arange(4)
    assert torch.equal(out[0:4], offset + b) and offset + 3 > 2**31
    assert torch.equal(out[4:8], prev_offset + b)
    assert torch.equal(out[8:12], (b < rows).long()) and torch.equal(out[12:16], (b < continuing).long())
    r, u = (first_row + b)[:, None], torch.arange(2)[None, :]
    assert torch.equal(out[16:24].view(4, 2), r * 4 * H + u) and out[16:24].max() > 2**31
    assert torch.equal(out[24:32].view(4, 2), r * H + u)
    assert out[32].item() == B * H  # half 1 of [2, B, H]


def test_launch_device(monkeypatch):
    """A launch runs on the device of its first CUDA tensor argument; CPU tensors (the
    interpreter) and fake ones (tracing) need no guard."""
    cpu = torch.zeros(1)
    assert launch.launch_device([cpu, 3, None]) is None
    if torch.version.cuda is None:
        pytest.skip("fake CUDA tensors need a CUDA build of torch")
    with FakeTensorMode():
        on_1, on_0 = torch.empty(2, device="cuda:1"), torch.empty(2, device="cuda:0")
    assert launch.launch_device([cpu, on_1, on_0]) is None
    monkeypatch.setattr(launch, "is_fake", lambda t: False)  # stand-ins for real tensors of two GPUs
    assert launch.launch_device([cpu, on_1, on_0]) == torch.device("cuda:1")
    entered = []
    monkeypatch.setattr(launch.torch.cuda, "device", lambda d: entered.append(d) or contextlib.nullcontext())
    with launch.device_guard([None, on_1]):
        pass
    assert entered == [torch.device("cuda:1")]


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
def test_every_launch_is_guarded(on_cpu, monkeypatch, implementation):
    """Every launch of each layer implementation, forward and backward, and of the cell
    ops, runs inside launch.device_guard with its arguments."""
    args = layer_sample("packed", True, True, torch.float32)
    grads = grads_like(reference.lstm_layer_fwd(*args)[:3], 4)
    gates, c_prev = cell_sample(torch.float32)
    with launch.capture_launches() as launches:
        run_layer(implementation, args, grads=grads)
        OPS.cell_fwd(gates, c_prev)
    guarded = []
    monkeypatch.setattr(launch, "device_guard", lambda values: guarded.append(values) or contextlib.nullcontext())
    run_layer(implementation, args, grads=grads)
    OPS.cell_fwd(gates, c_prev)
    assert len(guarded) == len(launches) > 0
    assert all(any(isinstance(v, torch.Tensor) for v in values) for values in guarded)


# --- which implementation the layer ops run ---------------------------------------------------

@pytest.mark.parametrize("H,P,dtype,expected", [
    (128, 128, torch.bfloat16, "persistent"), (128, 128, torch.float16, "persistent"),
    (129, 129, torch.bfloat16, "streamed"), (256, 256, torch.float16, "streamed"),
    (257, 257, torch.bfloat16, "per-step"),
    (64, 64, torch.float32, "persistent"), (65, 65, torch.float32, "streamed"),
    (256, 128, torch.float32, "streamed"), (512, 256, torch.float32, "per-step"),
    (16, 16, torch.float64, "per-step"),                        # cuBLAS for float64
    (128, 64, torch.bfloat16, "persistent"), (200, 64, torch.bfloat16, "streamed"),  # max(H, P) counts
])
def test_layer_implementation_rule(H, P, dtype, expected):
    assert triton_ops.layer_implementation(H, P, dtype) == expected


@pytest.mark.parametrize("dtype,H,expected", [(torch.float32, 13, "persistent"), (torch.float64, 13, "per-step"),
                                              (torch.float32, 65, "streamed"), (torch.float32, 257, "per-step")],
                         ids=["f32-H13", "f64-H13", "f32-H65", "f32-H257"])
def test_layer_op_runs_the_chosen_implementation(on_cpu, monkeypatch, dtype, H, expected):
    calls = []
    for implementation, names in {"persistent": ("lstm_persistent_fwd", "lstm_persistent_bwd"),
                                  "streamed": ("lstm_streamed_fwd", "lstm_streamed_bwd"),
                                  "per-step": ("per_step_fwd", "per_step_bwd")}.items():
        for name in names:
            original = getattr(triton_ops, name)
            monkeypatch.setattr(triton_ops, name,
                                lambda *a, _f=original, _i=implementation: calls.append(_i) or _f(*a))
    args = layer_sample("packed", False, False, dtype, H=H, lengths=(2, 1))
    x_proj = args[0].clone().requires_grad_()
    out, h_n, c_n = OPS.layer(x_proj, *args[1:])
    (out.sum() + h_n.sum()).backward()
    assert calls == [expected, expected]
    assert_close(out, reference.lstm_layer_fwd(*args)[0], dtype, "output")


@pytest.mark.parametrize("forced", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["padded", "packed"])
def test_fused_lstm_on_each_implementation(on_cpu, monkeypatch, forced, dtype, kind):
    """FusedLSTM(backend="triton") matches nn.LSTM with the layer ops forced onto one
    implementation (the parity suite covers the ops' own choice)."""
    monkeypatch.setattr(triton_ops, "layer_implementation", lambda H, P, dtype: forced)
    gen = torch.Generator().manual_seed(zlib.crc32(repr((forced, kind)).encode()))
    expected_lstm = nn.LSTM(4, 9, num_layers=2, bidirectional=True, proj_size=3, dtype=dtype)
    fused = FusedLSTM.from_lstm(expected_lstm, backend="triton")
    leaf, to_input = make_input(kind, 5, 3, 4, False, dtype, "cpu", gen)
    hx = tuple(torch.randn(4, 3, n, dtype=dtype, generator=gen).requires_grad_() for n in (3, 9))
    expected = forward_backward(expected_lstm, leaf, to_input, hx, torch.Generator().manual_seed(1))
    actual = forward_backward(fused, leaf, to_input, hx, torch.Generator().manual_seed(1))
    for name in expected:
        assert_close(actual[name], expected[name], dtype, name)


@pytest.mark.parametrize("forced", list(IMPLEMENTATIONS))
def test_layer_op_without_saving(on_cpu, monkeypatch, forced):
    """The forward op alone (save_for_backward=False, as under torch.no_grad) returns six
    distinct tensors, as a custom op must (the empty acts, cells and h_raw included)."""
    monkeypatch.setattr(triton_ops, "layer_implementation", lambda H, P, dtype: forced)
    args = layer_sample("packed", True, False)
    results = OPS.layer_fwd(*args, False)
    assert len({id(r) for r in results}) == 6 and all(r.numel() == 0 for r in results[3:])
    assert_close(results[0], reference.lstm_layer_fwd(*args)[0], torch.float64, "output")


@pytest.mark.parametrize("forced", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["bf16", "f16"])
@pytest.mark.parametrize("kind", ["padded", "packed"])
def test_reduced_precision_on_each_implementation(on_cpu, monkeypatch, forced, dtype, kind):
    """test_reduced_precision's rule with the layer ops forced onto one implementation."""
    skip_unless_rounding_matches("triton", "cpu", dtype)
    monkeypatch.setattr(triton_ops, "layer_implementation", lambda H, P, dtype: forced)
    check_reduced_precision("triton", "cpu", dtype, kind, 8)


# --- registration ---------------------------------------------------------------------------

@pytest.mark.parametrize("sample_id", list(opcheck_samples()))
def test_opcheck_under_interpreter(on_cpu, sample_id):
    """The checks that can run under the interpreter; the fake-tensor and AOT ones run
    the Triton kernels on fake tensors, which the interpreter cannot (see the GPU test)."""
    op_name, args = opcheck_samples()[sample_id]
    torch.library.opcheck(TRITON_OPS[op_name], args, test_utils=("test_schema", "test_autograd_registration"))


def trace_ops_on_fake_cuda_tensors():
    """Trace each op like torch.compile's AOT stage does (aot_function, fake CUDA
    tensors) and check that its graph holds the Triton kernels and gives the shapes of
    fusedlstm.ops.FAKE_RULES. Needs no GPU, but compiled (not interpreted) kernels:
    run by test_ops_trace_into_their_kernels in a process without TRITON_INTERPRET."""
    from functorch.compile import aot_function, make_boxed_func
    from torch._subclasses.fake_tensor import FakeTensorMode

    kept = ("cell_", "layer_fwd-packed-proj-rev", "layer_bwd-packed-proj-rev", "layer_fwd-dense-noproj-fwd",
            "layer_bwd-dense-noproj-fwd")
    chosen = triton_ops.layer_implementation
    # (dtype, implementation, launches per layer call): the ops' own choice, persistent for
    # float32 and per-step (T = 6 launches) for float64, then the streamed kernel forced.
    for dtype, forced, kernels_per_layer in ((torch.float32, None, 1), (torch.float64, None, 6),
                                             (torch.float32, "streamed", 1)):
        triton_ops.layer_implementation = chosen if forced is None else (lambda H, P, dtype, _f=forced: _f)
        for config, (op_name, args) in opcheck_samples("cpu", dtype).items():
            if not config.startswith(kept):
                continue
            mode, kernels = FakeTensorMode(), []
            args = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]

            def count_kernels(gm, example_inputs):
                kernels.append(sum("triton_kernel_wrapper" in str(n.target) for n in gm.graph.nodes))
                return make_boxed_func(gm.forward)

            with mode:
                fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
                fake = [a.to("cuda") if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in fake]
                positions = [i for i, a in enumerate(fake) if isinstance(a, torch.Tensor)]

                def call(*tensors):
                    full = list(fake)
                    for i, t in zip(positions, tensors):
                        full[i] = t
                    return TRITON_OPS[op_name](*full)

                out = aot_function(call, fw_compiler=count_kernels)(*[fake[i] for i in positions])
                expected = ops.FAKE_RULES[op_name](*fake)
            assert [tuple(o.shape) for o in out] == [tuple(e.shape) for e in expected], config
            assert kernels == [1 if op_name.startswith("lstm_cell") else kernels_per_layer], (config, dtype, kernels)


@pytest.mark.slow
@pytest.mark.skipif(torch.version.cuda is None, reason="fake CUDA tensors need a CUDA build of torch")
def test_ops_trace_into_their_kernels():
    """The triton_op bodies trace with fake tensors (no data-dependent host code) into
    graphs of Triton kernel launches, as torch.compile needs; checked without a GPU."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import test_triton; test_triton.trace_ops_on_fake_cuda_tensors()"
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def compile_kernels_for_sm90():
    """Compile every Triton kernel, with the arguments its launcher passes
    (budget.layer_launches), for sm_90 (the H200; Triton's own ptxas, no GPU), at
    each layer implementation's size limit, with and without a projection, and
    check the reports against sm_90: shared memory within a block's 227 KiB and,
    for the persistent kernel (whose limits come from this report), no spills.
    Run by test_kernels_compile_for_sm90 in a process without TRITON_INTERPRET."""
    from fusedlstm.triton import budget

    cases = [("per-step", 13, (torch.float64, torch.float32, torch.bfloat16)),
             ("per-step", 300, (torch.float32, torch.float16)),
             ("persistent", 64, (torch.float32,)),
             ("persistent", 128, (torch.bfloat16, torch.float16)),
             ("streamed", 256, (torch.float32, torch.bfloat16, torch.float16))]
    reports = {}
    for implementation, H, dtypes in cases:
        for dtype in dtypes:
            for proj in (True, False):
                launches = budget.layer_launches(implementation, dtype, H, H // 2 if proj else H, proj)
                for kernel, args, kwargs in budget.distinct(launches):
                    where = (kernel.__name__, str(dtype), H, proj)
                    reports[where] = report = budget.compile_report(kernel, args, kwargs, arch=90)
                    assert report["shared"] <= budget.SHARED_PER_BLOCK[90], (where, report)
                    if implementation == "persistent":
                        assert report["spilled"] == 0, (where, report)
    names = sorted({where[0] for where in reports})
    print(f"{len(reports)} variants of {len(names)} kernels compiled for sm_90; shared memory up to "
          f"{max(r['shared'] for r in reports.values())} bytes")
    assert names == ["_lstm_cell_bwd_kernel", "_lstm_cell_fwd_kernel", "_lstm_persistent_bwd_kernel",
                     "_lstm_persistent_fwd_kernel", "_lstm_streamed_bwd_kernel", "_lstm_streamed_fwd_kernel"], names


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    """Every Triton kernel compiles to machine code for sm_90 (the H200) and fits its
    shared memory, checked without a GPU, so that CI catches what only a GPU run
    would otherwise show."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import test_triton; test_triton.compile_kernels_for_sm90()"
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.slow
def test_budget_cli_reports_each_kernel():
    """`python -m fusedlstm.triton.budget` prints ptxas's allotment per kernel and size."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "fusedlstm.triton.budget", "--kernel", "per-step", "--sizes",
                             "13", "--dtypes", "fp32"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("cell_")]
    assert [row[:4] for row in rows] == [["cell_fwd", "fp32", "13", "13"], ["cell_bwd", "fp32", "13", "13"]]
    assert all(0 < int(row[5]) <= 255 and row[-1] == "yes" for row in rows), rows


def test_triton_op_finds_every_kernel():
    """torch.library.triton_op reads each op's source for the Triton kernels it launches
    (torch.compile's caches hash them): the layer ops name those of all three
    implementations, through the one-launch kernels' launchers. Run in a process without
    the interpreter, whose kernels torch does not recognise."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import json, fusedlstm.triton.ops; from torch._library import triton as t; "
            "print(json.dumps({op: sorted(k.fn.__name__ for k in t.get_triton_kernels_for_op(op)) "
            "for op in t.triton_ops_to_kernels if op.startswith('fusedlstm::')}))")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads(result.stdout.splitlines()[-1])
    kernels = lambda *names: [f"_lstm_{name}_kernel" for name in names]  # noqa: E731
    assert found == {"fusedlstm::triton_lstm_cell_fwd": kernels("cell_fwd"),
                     "fusedlstm::triton_lstm_cell_bwd": kernels("cell_bwd"),
                     "fusedlstm::triton_lstm_layer_fwd": kernels("cell_fwd", "persistent_fwd", "streamed_fwd"),
                     "fusedlstm::triton_lstm_layer_bwd": kernels("cell_bwd", "persistent_bwd", "streamed_bwd")}


@pytest.mark.skipif(ops.cpp is None, reason="fusedlstm._C is not built: no C++ schemas to compare")
@pytest.mark.parametrize("name", ops.CONTRACT)
def test_schemas_are_the_contracts(name):
    ours = getattr(torch.ops.fusedlstm, f"triton_{name}").default._schema
    contract = getattr(torch.ops.fusedlstm, name).default._schema
    assert [(a.name, str(a.type), a.default_value) for a in ours.arguments] == \
        [(a.name, str(a.type), a.default_value) for a in contract.arguments]
    assert [str(r.type) for r in ours.returns] == [str(r.type) for r in contract.returns]


@pytest.mark.parametrize("forced", list(IMPLEMENTATIONS))
def test_gradcheck_layer_op(on_cpu, monkeypatch, forced):
    monkeypatch.setattr(triton_ops, "layer_implementation", lambda H, P, dtype: forced)
    x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse = layer_sample("packed", True, True, H=3, P=2,
                                                                    lengths=(3, 1))
    inputs = [t.requires_grad_() for t in (x_proj, w_hh, h0, c0, w_hr)]

    def run(x_proj, w_hh, h0, c0, w_hr):
        return OPS.layer(x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse)

    assert torch.autograd.gradcheck(run, inputs, fast_mode=True)


def test_gradcheck_cell_op(on_cpu):
    gates, c_prev = (t.requires_grad_() for t in cell_sample(B=2, H=3))
    assert torch.autograd.gradcheck(OPS.cell, (gates, c_prev))


# --- availability -----------------------------------------------------------------------------

def test_import_fusedlstm_does_not_import_triton():
    code = "import sys, fusedlstm; assert 'triton' not in sys.modules, 'triton imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = backends.BACKENDS["triton"].unavailable("cpu")
    assert reason is not None and "TRITON_INTERPRET=1" in reason
    with pytest.raises(RuntimeError, match="backend 'triton' is not available for cpu tensors"):
        FusedLSTM(3, 4, backend="triton")(torch.zeros(2, 1, 3))


def test_cpu_tensors_under_the_interpreter(on_cpu):
    assert triton_ops.INTERPRETED
    assert "triton" in backends.available_backends("cpu")
    assert backends.resolve("auto", torch.device("cpu")).name != "triton"  # never chosen by "auto" on CPU


def test_other_devices_are_refused():
    assert "CUDA tensors" in backends.BACKENDS["triton"].unavailable("meta")


# --- on a GPU, at real sizes ---------------------------------------------------------------------

GPU_CASES = [  # (T, B, I, H, proj, kind): persistent (H <= 64 fp32, <= 128 fp16/bf16) and per-step sizes
    (50, 8, 32, 64, 0, "padded"),
    (50, 37, 32, 128, 0, "packed"),
    (30, 16, 64, 256, 0, "padded"),
    (30, 12, 32, 96, 48, "packed"),
]
GPU_IDS = [f"T{t}-B{b}-H{h}-P{p or h}-{k}" for t, b, _, h, p, k in GPU_CASES]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32] + LOW_PRECISION, ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("T,B,I,H,proj,kind", GPU_CASES, ids=GPU_IDS)
def test_gpu_within_twice_cudnn_error(on_cuda, dtype, T, B, I, H, proj, kind):
    """Outputs and every gradient against a float64 nn.LSTM: at most twice the error of
    nn.LSTM (cuDNN, TF32 off) in the same dtype (lstm_testing.check_reduced_precision)."""
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        check_reduced_precision("triton", "cuda", dtype, kind, proj, T=T, B=B, I=I, H=H)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64-per-step", "f32-persistent"])
@pytest.mark.parametrize("sample", list(opcheck_samples()))  # one test each: all in one took over 100 s on an H200
def test_gpu_full_opcheck(on_cuda, dtype, sample):
    op_name, args = opcheck_samples("cuda", dtype)[sample]
    torch.library.opcheck(TRITON_OPS[op_name], args)


@pytest.mark.cuda
@pytest.mark.parametrize("H,implementation", [(32, "persistent"), (96, "streamed"), (320, "per-step")],
                         ids=["persistent", "streamed", "per-step"])
@pytest.mark.slow
def test_gpu_compiled_model_matches_eager(on_cuda, H, implementation):
    """torch.compile(fullgraph=True) of a Triton-backed model, with inductor and with
    aot_eager (functionalization without inductor's code generation): the failure
    message names which results differ under which, to tell the two apart. A
    random initial state, different per layer and direction: with zeros, a kernel
    handed another layer's h0 or c0 would go unnoticed (streamed.py, "Initial state")."""
    assert triton_ops.layer_implementation(H, H // 2, torch.float32) == implementation
    torch.manual_seed(0)
    lstm = FusedLSTM(16, H, num_layers=2, batch_first=True, proj_size=H // 2, bidirectional=True,
                     backend="triton", device="cuda")
    x = torch.randn(4, 9, 16, device="cuda", requires_grad=True)
    hx = (torch.randn(4, 4, H // 2, device="cuda", requires_grad=True),
          torch.randn(4, 4, H, device="cuda", requires_grad=True))
    eager = forward_backward(lstm, x, lambda t: t, hx, torch.Generator().manual_seed(1))
    differing = {}
    for compiler in ("inductor", "aot_eager"):
        torch._dynamo.reset()
        compiled = forward_backward(torch.compile(lstm, fullgraph=True, backend=compiler), x, lambda t: t,
                                    hx, torch.Generator().manual_seed(1))
        # Same entries in the same order; the compiled module's parameter names carry a prefix.
        differing[compiler] = [
            f"{name} (max diff {(c - e).abs().max().item():.3g})"
            for (name, e), c in zip(eager.items(), compiled.values())
            if not torch.allclose(c, e, rtol=1e-5, atol=1e-5)]
    assert differing == {"inductor": [], "aot_eager": []}
