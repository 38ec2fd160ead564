"""Property-based: random configurations of FusedLSTM agree with nn.LSTM, on every
backend usable here, in outputs, gradients and second derivatives.

The number of examples comes from the hypothesis profile (tests/conftest.py):
"ci" by default, sized for the CI machine; a long fuzz run is
`pytest tests/test_properties.py --hypothesis-profile=long`."""

import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from fusedlstm import FusedLSTM, backends, double_backward
from lstm_testing import assert_close, forward_backward, make_input

# The Triton backend joins under the interpreter (tests/conftest.py), at small sizes.
BACKENDS = [name for name in ("cpu", "reference", "triton") if backends.BACKENDS[name].unavailable("cpu") is None]


@st.composite
def configurations(draw, max_hidden=9, max_layers=3):
    hidden = draw(st.integers(1, max_hidden))
    return dict(
        input_size=draw(st.integers(1, 6)),
        hidden_size=hidden,
        num_layers=draw(st.integers(1, max_layers)),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
        proj_size=draw(st.integers(0, hidden - 1)),
    )


def random_state(config, batch, unbatched, gen):
    layers = config["num_layers"] * (2 if config["bidirectional"] else 1)
    shapes = [(layers, batch, config["proj_size"] or config["hidden_size"]), (layers, batch, config["hidden_size"])]
    if unbatched:
        shapes = [(s[0], s[2]) for s in shapes]
    return tuple(torch.randn(s, dtype=torch.float64, generator=gen).requires_grad_() for s in shapes)


@settings(deadline=None)
@given(config=configurations(), kind=st.sampled_from(["padded", "packed", "unbatched"]), T=st.integers(1, 7),
       B=st.integers(1, 5), with_state=st.booleans(), backend=st.sampled_from(BACKENDS),
       seed=st.integers(0, 2**31 - 1))
def test_random_configurations_match_nn_lstm(config, kind, T, B, with_state, backend, seed):
    if backend == "triton":  # interpreted kernels: keep the example small
        T, B = min(T, 4), min(B, 3)
    gen = torch.Generator().manual_seed(seed)
    reference = nn.LSTM(**config, dtype=torch.float64)
    fused = FusedLSTM.from_lstm(reference, backend=backend)
    leaf, to_input = make_input(kind, T, B, config["input_size"], config["batch_first"], torch.float64, "cpu", gen)
    hx = random_state(config, B, kind == "unbatched", gen) if with_state and kind != "packed" else None
    expected = forward_backward(reference, leaf, to_input, hx, torch.Generator().manual_seed(seed))
    actual = forward_backward(fused, leaf, to_input, hx, torch.Generator().manual_seed(seed))
    for name in expected:
        assert_close(actual[name], expected[name], torch.float64, name)


@settings(deadline=None, max_examples=max(5, settings.default.max_examples // 4))
@given(config=configurations(max_hidden=5, max_layers=2), T=st.integers(1, 4), B=st.integers(1, 3),
       backend=st.sampled_from(BACKENDS), seed=st.integers(0, 2**31 - 1))
def test_random_gradient_penalties_match_nn_lstm(config, T, B, backend, seed):
    """Second derivatives: the gradient of ||d(output . w)/dx||^2 with respect to the
    input and every parameter."""
    gen = torch.Generator().manual_seed(seed)
    reference = nn.LSTM(**config, dtype=torch.float64)
    fused = FusedLSTM.from_lstm(reference, backend=backend)
    shape = (B, T, config["input_size"]) if config["batch_first"] else (T, B, config["input_size"])
    x = torch.randn(shape, dtype=torch.float64, generator=gen)

    def penalty_grads(module):
        module.zero_grad()
        leaf = x.clone().requires_grad_()
        with double_backward():
            out = module(leaf)[0]
        weights = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        (grad,) = torch.autograd.grad((out * weights).sum(), leaf, create_graph=True)
        grad.pow(2).sum().backward()
        return {"input": leaf.grad, **{name: p.grad for name, p in module.named_parameters()}}

    expected, actual = penalty_grads(reference), penalty_grads(fused)
    for name in expected:
        assert_close(actual[name], expected[name], torch.float64, name)
