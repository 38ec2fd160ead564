"""FusedLSTM against torch.nn.LSTM with the same weights: outputs, h_n, c_n and
the gradients of input, h0, c0 and every parameter, over every option."""

import copy
import zlib

import pytest
import torch
from torch import nn

from fusedlstm import FusedLSTM
from lstm_testing import (assert_close, assert_error_at_most_twice_pytorchs, backend_params, forward_backward,
                          make_input, skip_unless_usable)

INPUT, HIDDEN, PROJ, BATCH = 5, 13, 4, 3


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["padded", "packed", "unbatched"])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("proj_size", [0, PROJ], ids=["noproj", "proj"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_nn_lstm(backend, device, dtype, kind, num_layers, bidirectional, batch_first,
                         proj_size, bias):
    skip_unless_usable(backend, device)
    gen = torch.Generator().manual_seed(zlib.crc32(repr((kind, num_layers, bidirectional, proj_size)).encode()))
    config = dict(num_layers=num_layers, bias=bias, batch_first=batch_first,
                  bidirectional=bidirectional, proj_size=proj_size, dtype=dtype)
    reference = nn.LSTM(INPUT, HIDDEN, **config).to(device)
    fused = FusedLSTM.from_lstm(reference, backend=backend)
    T = 1 if kind == "unbatched" and num_layers == 3 else 6  # T=1 covered too
    leaf, to_input = make_input(kind, T, BATCH, INPUT, batch_first, dtype, device, gen)
    layers = num_layers * (2 if bidirectional else 1)
    hx_shape = (layers,) if kind == "unbatched" else (layers, BATCH)
    hx = tuple(torch.randn(*hx_shape, size, dtype=dtype, generator=gen).to(device).requires_grad_()
               for size in (proj_size or HIDDEN, HIDDEN))

    expected = forward_backward(reference, leaf, to_input, hx, torch.Generator().manual_seed(1))
    actual = forward_backward(fused, leaf, to_input, hx, torch.Generator().manual_seed(1))
    assert actual.keys() == expected.keys()
    if device == "cuda" and dtype == torch.float32:
        # On a GPU, float32 weight gradients of nn.LSTM (cuDNN) and of any backend built
        # on cuBLAS (the plain-PyTorch reference too) differed by up to 3.4e-5 in single
        # elements (H200, 2026-11-28): two summation orders, each with its own rounding.
        # So both are measured against float64 on the same values, and ours may have at
        # most twice cuDNN's error (or 1e-5).
        exact = forward_backward(copy.deepcopy(reference).double(), leaf.detach().double().requires_grad_(),
                                 to_input, tuple(t.detach().double().requires_grad_() for t in hx),
                                 torch.Generator().manual_seed(1), weight_dtype=dtype)
        assert_error_at_most_twice_pytorchs(actual, expected, exact, dtype)
    else:
        for name in expected:
            assert_close(actual[name], expected[name], dtype, name)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("kind", ["padded", "packed", "unbatched"])
def test_default_zero_state(backend, device, kind):
    """hx=None means zero initial states, as for nn.LSTM."""
    skip_unless_usable(backend, device)
    gen = torch.Generator().manual_seed(3)
    reference = nn.LSTM(INPUT, HIDDEN, num_layers=2, bidirectional=True, dtype=torch.float64).to(device)
    fused = FusedLSTM.from_lstm(reference, backend=backend)
    leaf, to_input = make_input(kind, 4, BATCH, INPUT, False, torch.float64, device, gen)
    expected = forward_backward(reference, leaf, to_input, None, torch.Generator().manual_seed(2))
    actual = forward_backward(fused, leaf, to_input, None, torch.Generator().manual_seed(2))
    for name in expected:
        assert_close(actual[name], expected[name], torch.float64, name)


@pytest.mark.parametrize("backend,device", backend_params())
def test_non_contiguous_input_and_state(backend, device):
    skip_unless_usable(backend, device)
    gen = torch.Generator().manual_seed(4)
    reference = nn.LSTM(INPUT, HIDDEN, num_layers=2, batch_first=True, dtype=torch.float64).to(device)
    fused = FusedLSTM.from_lstm(reference, backend=backend)
    base = torch.randn(6, 2 * BATCH, 2 * INPUT, dtype=torch.float64, generator=gen).to(device)
    x = base[:, ::2, ::2].transpose(0, 1)  # strided, batch-first view [B, T, I]
    h = torch.randn(2, 2 * BATCH, HIDDEN, dtype=torch.float64, generator=gen).to(device)[:, ::2]
    c = torch.randn(2, HIDDEN, BATCH, dtype=torch.float64, generator=gen).to(device).transpose(1, 2)
    assert not (x.is_contiguous() or h.is_contiguous() or c.is_contiguous())
    with torch.no_grad():
        # cuDNN's nn.LSTM refuses non-contiguous states ("rnn: hx is not contiguous"; seen
        # on an H200): the baseline gets copies, FusedLSTM the views themselves.
        expected, (eh, ec) = reference(x, (h.contiguous(), c.contiguous()))
        actual, (ah, ac) = fused(x, (h, c))
    for name, a, e in (("output", actual, expected), ("h_n", ah, eh), ("c_n", ac, ec)):
        assert_close(a, e, torch.float64, name)


@pytest.mark.parametrize("backend,device", backend_params())
def test_empty_batch(backend, device):
    skip_unless_usable(backend, device)
    reference = nn.LSTM(INPUT, HIDDEN, dtype=torch.float64).to(device)
    fused = FusedLSTM.from_lstm(reference, backend=backend)
    x = torch.randn(4, 0, INPUT, dtype=torch.float64, device=device)
    out, (h, c) = fused(x)
    expected, (eh, ec) = reference(x)
    assert out.shape == expected.shape and h.shape == eh.shape and c.shape == ec.shape


@pytest.mark.parametrize("backend,device", backend_params())
def test_dropout_one_zeroes_deeper_layers_input(backend, device):
    """With p=1 every element between layers is dropped, deterministically:
    the result equals nn.LSTM's under the same condition."""
    skip_unless_usable(backend, device)
    gen = torch.Generator().manual_seed(5)
    reference = nn.LSTM(INPUT, HIDDEN, num_layers=3, dropout=1.0, dtype=torch.float64).to(device)
    fused = FusedLSTM.from_lstm(reference, backend=backend)
    leaf, to_input = make_input("padded", 5, BATCH, INPUT, False, torch.float64, device, gen)
    expected = forward_backward(reference, leaf, to_input, None, torch.Generator().manual_seed(6))
    actual = forward_backward(fused, leaf, to_input, None, torch.Generator().manual_seed(6))
    for name in expected:
        assert_close(actual[name], expected[name], torch.float64, name)
