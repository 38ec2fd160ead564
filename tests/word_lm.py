"""A word-level language model used the way pytorch/examples' word_language_model
uses its RNNModel (Embedding, dropout, a 2-layer LSTM, Linear, log-softmax),
with FusedLSTM in place of nn.LSTM: truncated-BPTT training with plain SGD on
`p.data`, the whole model saved with torch.save, loaded with torch.load's
default weights_only=True and an allow-list of the model's own classes,
sampled one token at a time with the state carried, and exported to ONNX.
Imported by tests/test_word_language_model.py and by the fresh processes it
starts (the pickle names RNNModel from here)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fusedlstm import FusedLSTM


class RNNModel(nn.Module):
    def __init__(self, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float = 0.5):
        super().__init__()
        self.ntoken, self.nhid, self.nlayers = ntoken, nhid, nlayers
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = FusedLSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, input, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(input)), hidden)
        decoded = self.decoder(self.drop(output)).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, batch: int):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, batch, self.nhid),
                weight.new_zeros(self.nlayers, batch, self.nhid))


# The allow-list a user writes for torch.load: the model's own classes. FusedLSTM
# is not on it: importing fusedlstm makes it loadable.
SAFE_GLOBALS = [RNNModel, nn.Dropout, nn.Embedding, nn.Linear]


def batchify(tokens: torch.Tensor, batch: int) -> torch.Tensor:
    """[N] token ids -> [N // batch, batch], one contiguous stream per column."""
    steps = tokens.numel() // batch
    return tokens[:steps * batch].view(batch, steps).t().contiguous()


def get_batch(data: torch.Tensor, i: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The window of up to `bptt` steps at row i, and its targets (the next tokens, flat)."""
    steps = min(bptt, data.size(0) - 1 - i)
    return data[i:i + steps], data[i + 1:i + 1 + steps].reshape(-1)


def train(model: RNNModel, data: torch.Tensor, steps: int, bptt: int = 7, lr: float = 20.0,
          clip: float = 0.25) -> list[float]:
    """`steps` windows of truncated BPTT, the state carried and detached between them."""
    model.train()
    hidden = model.init_hidden(data.size(1))
    losses = []
    for step in range(steps):
        inputs, targets = get_batch(data, step * bptt, bptt)
        hidden = tuple(h.detach() for h in hidden)
        model.zero_grad()
        output, hidden = model(inputs, hidden)
        loss = F.nll_loss(output, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
        losses.append(loss.item())
    return losses


def evaluate(model: RNNModel, data: torch.Tensor, bptt: int = 7) -> float:
    """Mean negative log-likelihood per token over `data`, in eval() and no_grad."""
    model.eval()
    hidden = model.init_hidden(data.size(1))
    total = 0.0
    with torch.no_grad():
        for i in range(0, data.size(0) - 1, bptt):
            inputs, targets = get_batch(data, i, bptt)
            output, hidden = model(inputs, hidden)
            total += len(inputs) * F.nll_loss(output, targets).item()
    return total / (data.size(0) - 1)


def generate(model: RNNModel, words: int, seed: int) -> list[int]:
    """Token by token at batch 1, sampled from the softmax, the state carried."""
    torch.manual_seed(seed)
    model.eval()
    hidden = model.init_hidden(1)
    token = torch.randint(model.ntoken, (1, 1), dtype=torch.long)
    out = []
    with torch.no_grad():
        for _ in range(words):
            output, hidden = model(token, hidden)
            index = torch.multinomial(output.squeeze().exp(), 1)[0]
            token.fill_(index)
            out.append(int(index))
    return out
