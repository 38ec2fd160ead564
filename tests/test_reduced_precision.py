"""bfloat16 and float16: at most twice PyTorch's own error.

Both nn.LSTM and FusedLSTM run in the low dtype with the same (rounded)
weights and inputs; the oracle is nn.LSTM in float64 on those same rounded
values, so only arithmetic error is compared (flash-attention's rule;
lstm_testing.check_reduced_precision)."""

import pytest
import torch

from lstm_testing import backend_params, check_reduced_precision, skip_unless_rounding_matches, skip_unless_usable


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("kind", ["padded", "packed"])
@pytest.mark.parametrize("proj_size", [0, 8], ids=["noproj", "proj"])
def test_error_at_most_twice_pytorchs(backend, device, dtype, kind, proj_size):
    skip_unless_usable(backend, device)
    skip_unless_rounding_matches(backend, device, dtype)
    check_reduced_precision(backend, device, dtype, kind, proj_size)
