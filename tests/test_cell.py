"""FusedLSTMCell against torch.nn.LSTMCell with the same weights."""

import pytest
import torch
from torch import nn

from fusedlstm import FusedLSTMCell
from lstm_testing import assert_close, backend_params, skip_unless_usable


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "zero-hx"])
def test_matches_nn_lstm_cell(backend, device, dtype, batched, bias, with_state):
    skip_unless_usable(backend, device)
    gen = torch.Generator().manual_seed(11)
    reference = nn.LSTMCell(5, 13, bias=bias, dtype=dtype).to(device)
    fused = FusedLSTMCell.from_lstm_cell(reference, backend=backend)
    lead = (3,) if batched else ()
    x = torch.randn(*lead, 5, dtype=dtype, generator=gen).to(device).requires_grad_()
    hx = tuple(torch.randn(*lead, 13, dtype=dtype, generator=gen).to(device).requires_grad_()
               for _ in range(2)) if with_state else None
    weights = [torch.randn(*lead, 13, dtype=dtype, generator=gen).to(device) for _ in range(2)]

    def run(cell):
        for t in (x, *(hx or ()), *cell.parameters()):
            t.grad = None
        h, c = cell(x, hx)
        ((h * weights[0]).sum() + (c * weights[1]).sum()).backward()
        grads = [x.grad] + ([t.grad for t in hx] if hx else []) + [p.grad for p in cell.parameters()]
        return [h, c] + grads

    for a, e in zip(run(fused), run(reference)):
        assert_close(a, e, dtype)


def test_step_by_step_equals_fused_lstm_layer():
    """Stepping a cell through a sequence gives FusedLSTM's single-layer output."""
    from fusedlstm import FusedLSTM

    torch.manual_seed(0)
    lstm = FusedLSTM(4, 6, dtype=torch.float64)
    cell = FusedLSTMCell(4, 6, dtype=torch.float64)
    cell.load_state_dict({k[:-3]: v for k, v in lstm.state_dict().items()})
    x = torch.randn(7, 2, 4, dtype=torch.float64)
    out, (h_n, c_n) = lstm(x)
    state = None
    for t in range(7):
        state = cell(x[t], state)
        assert_close(state[0], out[t], torch.float64, f"step {t}")
    assert_close(state[1], c_n[0], torch.float64, "c_n")


def test_to_lstm_cell_round_trip():
    cell = FusedLSTMCell(3, 4, backend="reference")
    back = cell.to_lstm_cell()
    assert isinstance(back, nn.LSTMCell)
    for name, value in cell.state_dict().items():
        assert torch.equal(back.state_dict()[name], value)
