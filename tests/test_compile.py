"""torch.compile(fullgraph=True) sees FusedLSTM's ops as opaque custom ops
(their fake rules give the shapes) and matches eager execution."""

import pytest
import torch
from torch import nn

from fusedlstm import FusedLSTM, ops
from lstm_testing import forward_backward


class CharModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.lstm = FusedLSTM(6, 8, num_layers=2, batch_first=True, proj_size=5, bidirectional=True)
        self.head = nn.Linear(10, 11)

    def forward(self, tokens, state=None):
        out, state = self.lstm(self.embed(tokens), state)
        return self.head(out), state


@pytest.mark.slow
@pytest.mark.skipif(ops.cpp is None, reason="fusedlstm._C is not built")
def test_compiled_model_matches_eager():
    torch.manual_seed(0)
    model = CharModel()
    compiled = torch.compile(model, fullgraph=True)
    tokens = torch.randint(0, 11, (3, 7))
    eager = forward_backward(model, tokens, lambda t: t, None, torch.Generator().manual_seed(1))
    graph = forward_backward(compiled, tokens, lambda t: t, None, torch.Generator().manual_seed(1))
    # Same entries in the same order; the compiled module's parameter names carry a prefix.
    torch.testing.assert_close(list(graph.values()), list(eager.values()), rtol=1e-5, atol=1e-5)
