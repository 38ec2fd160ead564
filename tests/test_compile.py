"""torch.compile(fullgraph=True) sees FusedLSTM's ops as opaque custom ops
(their fake rules give the shapes) and matches eager execution."""

import pytest
import torch
from torch import nn

from fusedlstm import FusedLSTM, ops


class CharModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.lstm = FusedLSTM(6, 8, num_layers=2, batch_first=True, proj_size=5, bidirectional=True)
        self.head = nn.Linear(10, 11)

    def forward(self, tokens, state=None):
        out, state = self.lstm(self.embed(tokens), state)
        return self.head(out), state


@pytest.mark.skipif(ops.cpp is None, reason="fusedlstm._C is not built")
def test_compiled_model_matches_eager():
    torch.manual_seed(0)
    model = CharModel()
    compiled = torch.compile(model, fullgraph=True)
    tokens = torch.randint(0, 11, (3, 7))

    def run(fn):
        model.zero_grad()
        logits, (h_n, c_n) = fn(tokens)
        (logits.square().mean() + h_n.sum() + c_n.sum()).backward()
        return [logits, h_n, c_n] + [p.grad.clone() for p in model.parameters()]

    eager = run(model)
    graph = run(compiled)
    for a, e in zip(graph, eager):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
