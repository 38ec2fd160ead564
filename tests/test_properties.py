"""Property-based: random configurations of FusedLSTM agree with nn.LSTM."""

import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from fusedlstm import FusedLSTM, ops
from lstm_testing import assert_close, forward_backward, make_input

BACKEND = "cpu" if ops.cpp is not None else "reference"


@st.composite
def configurations(draw):
    hidden = draw(st.integers(1, 9))
    return dict(
        input_size=draw(st.integers(1, 6)),
        hidden_size=hidden,
        num_layers=draw(st.integers(1, 3)),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
        proj_size=draw(st.integers(0, hidden - 1)),
    ), draw(st.sampled_from(["padded", "packed", "unbatched"])), draw(st.integers(1, 7)), \
        draw(st.integers(1, 5)), draw(st.integers(0, 2**31 - 1))


@settings(max_examples=40, deadline=None)
@given(configurations())
def test_random_configurations_match_nn_lstm(drawn):
    config, kind, T, B, seed = drawn
    gen = torch.Generator().manual_seed(seed)
    reference = nn.LSTM(**config, dtype=torch.float64)
    fused = FusedLSTM.from_lstm(reference, backend=BACKEND)
    leaf, to_input = make_input(kind, T, B, config["input_size"], config["batch_first"],
                                torch.float64, "cpu", gen)
    expected = forward_backward(reference, leaf, to_input, None, torch.Generator().manual_seed(seed))
    actual = forward_backward(fused, leaf, to_input, None, torch.Generator().manual_seed(seed))
    for name in expected:
        assert_close(actual[name], expected[name], torch.float64, name)
