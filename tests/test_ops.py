"""The op contract, op by op: each backend's ops (the C++ CPU kernels, and the
CUDA kernels on a GPU) against the reference oracle, the oracle's explicit
backward against autograd, torch.library.opcheck on every op and sample, and
gradcheck in float64. The Triton ops have their own file, test_triton.py."""

import pytest
import torch
from torch.func import functional_call

from fusedlstm import FusedLSTM, ops, reference
from lstm_testing import (check_layer_bwd, LAYER_CONFIGS, LAYER_IDS, assert_close, cell_sample, device_params,
                          grads_like, layer_sample, opcheck_samples, skip_unless_usable)


# --- the oracle's backward is autograd's -------------------------------------------------

def test_reference_cell_bwd_matches_autograd():
    gates, c_prev = (t.requires_grad_() for t in cell_sample())
    h, c, act = reference.lstm_cell_fwd(gates, c_prev)
    grad_h, grad_c = grads_like((h, c), 1)
    expected = torch.autograd.grad((h, c), (gates, c_prev), (grad_h, grad_c))
    actual = reference.lstm_cell_bwd(grad_h, grad_c, act.detach(), c_prev.detach(), c.detach())
    for a, e in zip(actual, expected):
        assert_close(a, e, torch.float64)


@pytest.mark.parametrize("layout,proj,reverse", LAYER_CONFIGS, ids=LAYER_IDS)
def test_reference_layer_bwd_matches_autograd(layout, proj, reverse):
    x_proj, w_hh, h0, c0, w_hr, batch_sizes, _ = layer_sample(layout, proj, reverse)
    inputs = [t.requires_grad_() for t in (x_proj, w_hh, h0, c0) + ((w_hr,) if proj else ())]
    out, h_n, c_n, acts, cells, h_raw = reference.lstm_layer_fwd(x_proj, w_hh, h0, c0, w_hr, batch_sizes,
                                                                 reverse)
    grads = grads_like((out, h_n, c_n), 2)
    expected = torch.autograd.grad((out, h_n, c_n), inputs, grads)
    actual = reference.lstm_layer_bwd(*grads, w_hh, h0, c0, w_hr, batch_sizes, reverse,
                                      out.detach(), acts.detach(), cells.detach(), h_raw.detach())
    for a, e in zip(actual, expected):
        assert_close(a, e, torch.float64)


# --- the C++ ops against the oracle, on each device ------------------------------------------

needs_cpp = pytest.mark.skipif(ops.cpp is None, reason="fusedlstm._C is not built")


def skip_unless_kernels(device):
    """Skip (with the reason) unless the C++ ops have kernels for `device` here:
    the "cpu" and "cuda" backends are those kernels."""
    skip_unless_usable(device, device)


@needs_cpp
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_cell_ops_match_reference(device, dtype):
    skip_unless_kernels(device)
    gates, c_prev = cell_sample(dtype, device)
    actual = ops.cpp.cell_fwd(gates, c_prev)
    expected = reference.lstm_cell_fwd(gates, c_prev)
    for a, e in zip(actual, expected):
        assert a.device == gates.device
        assert_close(a, e, dtype)
    grad_h, grad_c = grads_like(expected[:2], 3)
    actual = ops.cpp.cell_bwd(grad_h, grad_c, expected[2], c_prev, expected[1])
    expected = reference.lstm_cell_bwd(grad_h, grad_c, expected[2], c_prev, expected[1])
    for a, e in zip(actual, expected):
        assert_close(a, e, dtype)


@needs_cpp
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("missing_grads", [False, True], ids=["all-grads", "none-grads"])
@pytest.mark.parametrize("layout,proj,reverse", LAYER_CONFIGS, ids=LAYER_IDS)
def test_layer_ops_match_reference(layout, proj, reverse, dtype, missing_grads, device):
    skip_unless_kernels(device)
    args = layer_sample(layout, proj, reverse, dtype, device)
    actual = ops.cpp.layer_fwd(*args, True)
    expected = reference.lstm_layer_fwd(*args, True)
    for a, e, name in zip(actual, expected, ["output", "h_n", "c_n", "acts", "cells"]):
        assert a.device == args[0].device
        assert_close(a, e, dtype, name)
    grads = grads_like(expected[:3], 4)
    if missing_grads:  # no gradient reaches h_n and c_n: they count as zeros
        grads = [grads[0], None, None]
    check_layer_bwd(ops.cpp.layer_bwd, args, expected, grads, dtype)


@needs_cpp
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("layout,proj,reverse", LAYER_CONFIGS, ids=LAYER_IDS)
def test_layer_without_saving_matches(layout, proj, reverse, device):
    skip_unless_kernels(device)
    args = layer_sample(layout, proj, reverse, device=device)
    saved = ops.cpp.layer_fwd(*args, True)
    unsaved = ops.cpp.layer_fwd(*args, False)
    for a, e in zip(unsaved[:3], saved[:3]):
        assert_close(a, e, torch.float64)
    assert unsaved[3].numel() == unsaved[4].numel() == unsaved[5].numel() == 0


@needs_cpp
def test_layer_without_saving_refuses_backward():
    x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse = layer_sample("dense", False, False)
    x_proj.requires_grad_()
    out = ops.cpp.layer_fwd(x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse, False)[0]
    with pytest.raises(RuntimeError, match="save_for_backward=False"):
        out.sum().backward()


# --- opcheck and gradcheck ---------------------------------------------------------------

@needs_cpp
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("sample_id", list(opcheck_samples("cpu")))
def test_opcheck(sample_id, device):
    skip_unless_kernels(device)
    op_name, args = opcheck_samples(device)[sample_id]
    torch.library.opcheck(getattr(torch.ops.fusedlstm, op_name).default, args)


@needs_cpp
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("layout,proj,reverse", LAYER_CONFIGS, ids=LAYER_IDS)
def test_gradcheck_layer_op(layout, proj, reverse, device):
    skip_unless_kernels(device)
    x_proj, w_hh, h0, c0, w_hr, batch_sizes, _ = layer_sample(layout, proj, reverse, device=device)
    inputs = [t.requires_grad_() for t in (x_proj, w_hh, h0, c0) + ((w_hr,) if proj else ())]

    def run(x_proj, w_hh, h0, c0, w_hr=None):
        return ops.cpp.layer(x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse)

    assert torch.autograd.gradcheck(run, inputs)


@needs_cpp
@pytest.mark.parametrize("device", device_params())
def test_gradcheck_cell_op(device):
    skip_unless_kernels(device)
    gates, c_prev = (t.requires_grad_() for t in cell_sample(device=device))
    assert torch.autograd.gradcheck(ops.cpp.cell, (gates, c_prev))


@pytest.mark.parametrize("backend,device", [
    ("cpu", "cpu"), ("reference", "cpu"), pytest.param("cuda", "cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_gradcheck_through_fused_lstm(backend, device, packed):
    """Gradients of input, h0, c0 and every parameter, by finite differences."""
    skip_unless_usable(backend, device)
    torch.manual_seed(0)
    lstm = FusedLSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, dtype=torch.float64,
                     backend=backend)
    names = [name for name, _ in lstm.named_parameters()]
    params = [p.detach().clone().to(device).requires_grad_() for p in lstm.parameters()]
    x, h0, c0 = (torch.randn(*shape, dtype=torch.float64).to(device).requires_grad_()
                 for shape in ((4, 3, 3), (4, 3, 2), (4, 3, 4)))
    lengths = torch.tensor([4, 2, 3])

    def run(x, h0, c0, *params):
        inp = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        out, (h_n, c_n) = functional_call(lstm, dict(zip(names, params)), (inp, (h0, c0)))
        return (out.data if packed else out), h_n, c_n

    assert torch.autograd.gradcheck(run, (x, h0, c0, *params))
