"""FusedLSTM as a drop-in nn.LSTM: parameters, initialisation, state_dicts,
conversion, dropout placement, and backend selection."""

import pytest
import torch
from torch import nn

import fusedlstm
from fusedlstm import FusedLSTM, FusedLSTMCell, backends

CONFIGS = [
    dict(input_size=5, hidden_size=7),
    dict(input_size=5, hidden_size=7, num_layers=3, bidirectional=True),
    dict(input_size=5, hidden_size=7, num_layers=2, proj_size=3, bias=False),
    dict(input_size=2, hidden_size=4, num_layers=2, bidirectional=True, proj_size=1, batch_first=True,
         dropout=0.25),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_same_seed_gives_nn_lstm_parameters(config):
    torch.manual_seed(7)
    expected = nn.LSTM(**config)
    torch.manual_seed(7)
    actual = FusedLSTM(**config)
    assert [n for n, _ in actual.named_parameters()] == [n for n, _ in expected.named_parameters()]
    for (name, a), (_, e) in zip(actual.named_parameters(), expected.named_parameters()):
        assert a.shape == e.shape, name
        assert torch.equal(a, e), name
    assert [[w.shape for w in ws] for ws in actual.all_weights] == \
           [[w.shape for w in ws] for ws in expected.all_weights]


@pytest.mark.parametrize("config", CONFIGS)
def test_state_dicts_move_both_ways(config):
    lstm, fused = nn.LSTM(**config), FusedLSTM(**config)
    fused.load_state_dict(lstm.state_dict())
    for name, value in lstm.state_dict().items():
        assert torch.equal(fused.state_dict()[name], value)
    other = nn.LSTM(**config)
    other.load_state_dict(FusedLSTM(**config).state_dict())


def test_from_lstm_and_to_lstm_copy_everything():
    lstm = nn.LSTM(**CONFIGS[3], dtype=torch.float64).eval()
    fused = FusedLSTM.from_lstm(lstm, backend="reference")
    assert fused.backend == "reference" and not fused.training
    assert fused.weight_ih_l0.dtype == torch.float64
    back = fused.to_lstm()
    assert isinstance(back, nn.LSTM) and not back.training
    for key in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                "bidirectional", "proj_size"):
        assert getattr(back, key) == getattr(lstm, key) == getattr(fused, key), key
    for name, value in lstm.state_dict().items():
        assert torch.equal(back.state_dict()[name], value)
        assert back.state_dict()[name].data_ptr() != value.data_ptr()  # copies, not shared


def test_repr_names_options_and_backend():
    text = repr(FusedLSTM(3, 8, num_layers=2, proj_size=4, bidirectional=True, backend="reference"))
    assert text == "FusedLSTM(3, 8, proj_size=4, num_layers=2, bidirectional=True, backend='reference')"


def test_flatten_parameters_is_harmless():
    fused = FusedLSTM(3, 4)
    fused.flatten_parameters()


def test_dropout_between_layers_in_training_only():
    """Training output equals running the layers one by one with dropout on
    every layer's output but the last, under the same random stream."""
    torch.manual_seed(0)
    fused = FusedLSTM(3, 6, num_layers=3, dropout=0.5, dtype=torch.float64, backend="reference")
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    layers = []
    for k in range(3):
        layer = nn.LSTM(3 if k == 0 else 6, 6, dtype=torch.float64)
        layer.load_state_dict({name.replace(f"_l{k}", "_l0"): value for name, value in
                               fused.state_dict().items() if name.endswith(f"_l{k}")})
        layers.append(layer)
    torch.manual_seed(1)
    actual, _ = fused(x)
    torch.manual_seed(1)
    expected = x
    for k, layer in enumerate(layers):
        expected, _ = layer(expected)
        if k < 2:
            expected = nn.functional.dropout(expected, 0.5, training=True)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)

    fused.eval()
    evaluated, _ = fused(x)
    reference = fused.to_lstm().eval()
    torch.testing.assert_close(evaluated, reference(x)[0], rtol=1e-10, atol=1e-10)


# --- backend selection ------------------------------------------------------------------

def test_available_backends_for_cpu():
    names = fusedlstm.available_backends("cpu")
    assert "reference" in names
    assert ("cpu" in names) == (fusedlstm.ops.cpp is not None)
    assert "cuda" not in names


def test_auto_picks_cpu_kernels_for_cpu_tensors():
    if fusedlstm.ops.cpp is None:
        pytest.skip("fusedlstm._C is not built")
    assert backends.resolve("auto", torch.device("cpu")).name == "cpu"


def test_environment_overrides_auto(monkeypatch):
    monkeypatch.setenv("FUSEDLSTM_BACKEND", "reference")
    assert FusedLSTM(3, 4).backend == "reference"
    assert FusedLSTM(3, 4, backend="cpu").backend == "cpu"  # an explicit choice stays
    monkeypatch.setenv("FUSEDLSTM_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="backend must be one of"):
        FusedLSTM(3, 4)


@pytest.mark.parametrize("module", ["lstm", "cell"])
def test_autocast_runs_in_autocast_dtype(module):
    """Under autocast the modules compute in autocast's dtype on cast copies of
    the float32 parameters, which receive the gradients."""
    torch.manual_seed(0)
    if module == "lstm":
        fused = FusedLSTM(6, 16, num_layers=2, backend="reference" if fusedlstm.ops.cpp is None else "cpu")
        x = torch.randn(5, 3, 6)
        plain = lambda m, inp: m(inp)[0]
    else:
        fused = FusedLSTMCell(6, 16, backend="reference" if fusedlstm.ops.cpp is None else "cpu")
        x = torch.randn(3, 6)
        plain = lambda m, inp: m(inp)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = plain(fused, x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fused.parameters())
    # The same computation without autocast, on bf16 copies, gives the same result.
    copy = (FusedLSTM if module == "lstm" else FusedLSTMCell)(6, 16, **(dict(num_layers=2) if module == "lstm" else {}),
                                                            dtype=torch.bfloat16, backend=fused.backend)
    copy.load_state_dict({k: v.bfloat16() for k, v in fused.state_dict().items()})
    torch.testing.assert_close(plain(copy, x.bfloat16()), out.detach(), rtol=0, atol=0)
