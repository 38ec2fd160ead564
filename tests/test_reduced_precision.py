"""bfloat16 and float16: at most twice PyTorch's own error.

Both nn.LSTM and FusedLSTM run in the low dtype with the same (rounded)
weights and inputs; the oracle is nn.LSTM in float64 on those same rounded
values, so only arithmetic error is compared (flash-attention's rule)."""

import pytest
import torch
from torch import nn

from fusedlstm import FusedLSTM
from lstm_testing import backend_params, forward_backward, make_input, skip_unless_usable


def max_error(results, reference):
    return {name: (value.double() - reference[name]).abs().max().item() for name, value in results.items()}


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("kind", ["padded", "packed"])
@pytest.mark.parametrize("proj_size", [0, 8], ids=["noproj", "proj"])
def test_error_at_most_twice_pytorchs(backend, device, dtype, kind, proj_size):
    skip_unless_usable(backend, device)
    gen = torch.Generator().manual_seed(21)
    low = nn.LSTM(24, 40, num_layers=2, bidirectional=True, proj_size=proj_size, dtype=dtype).to(device)
    exact = nn.LSTM(24, 40, num_layers=2, bidirectional=True, proj_size=proj_size, dtype=torch.float64).to(device)
    exact.load_state_dict({k: v.double() for k, v in low.state_dict().items()})
    fused = FusedLSTM.from_lstm(low, backend=backend)

    leaf, to_input = make_input(kind, 12, 5, 24, False, dtype, device, gen)
    leaf64 = leaf.detach().double().requires_grad_()
    reference = forward_backward(exact, leaf64, to_input, None, torch.Generator().manual_seed(3), weight_dtype=dtype)
    # Same loss weights in every run: drawn in float64, rounded for the low runs.
    theirs = max_error(forward_backward(low, leaf, to_input, None, torch.Generator().manual_seed(3)), reference)
    ours = max_error(forward_backward(fused, leaf, to_input, None, torch.Generator().manual_seed(3)), reference)
    resolution = torch.finfo(dtype).eps  # an error floor: one unit of the format near 1
    for name in reference:
        assert ours[name] <= max(2 * theirs[name], resolution), (
            f"{name}: error {ours[name]:.3g} vs PyTorch's {theirs[name]:.3g}")
