"""The character-level language model: Embedding -> stacked LSTMs -> Linear.

The LSTM stack may change size between layers (the seed preset has 1000 then
800 units): consecutive layers of one size form one multi-layer LSTM module (a
FusedLSTM, or torch.nn.LSTM for comparisons), with dropout after every layer.
FusedLSTM adds its regularisers of the recurrence (weight_dropout on every
W_hh, variational_dropout on every layer's input).

Shapes: B batch, T steps, V vocabulary, E embedding, H_k hidden size of layer
group k, L_k its number of layers.
    idx [B, T] int64 -> logits [B, T, V]
    state: one (h [L_k, B, H_k], c [L_k, B, H_k]) per group, or None for zeros.
"""

from __future__ import annotations

from itertools import groupby

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..lstm import FusedLSTM

LSTM_IMPLS = ("fused", "nn")

State = list[tuple[Tensor, Tensor]]


def layer_groups(hidden_sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    """(hidden size, number of layers) of each run of equal sizes: (1000, 800) ->
    [(1000, 1), (800, 1)]; (256, 256) -> [(256, 2)]."""
    return [(size, len(list(run))) for size, run in groupby(hidden_sizes)]


def run_lstm(lstm: nn.Module, x: Tensor, state: tuple[Tensor, Tensor] | None):
    """lstm(x, state), in autocast's precision when autocast is on.

    FusedLSTM follows autocast by itself, but torch.nn.LSTM on the CPU does
    not cast at all. So that both implementations compute in the same
    precision, under autocast the whole LSTM runs in the autocast dtype on
    copies of its parameters: the casts are differentiable, the float32
    parameters get the gradients.
    """
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return lstm(x, state)
    dtype = torch.get_autocast_dtype(device_type)
    params = {name: p.to(dtype) for name, p in lstm.named_parameters()}
    if state is not None:
        state = (state[0].to(dtype), state[1].to(dtype))
    with torch.autocast(device_type, enabled=False):
        return functional_call(lstm, params, (x.to(dtype), state))


class CharLM(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int, hidden_sizes: tuple[int, ...],
                 dropout: float = 0.0, lstm_impl: str = "fused", backend: str = "auto",
                 weight_dropout: float = 0.0, variational_dropout: float = 0.0) -> None:
        super().__init__()
        if lstm_impl not in LSTM_IMPLS:
            raise ValueError(f"lstm_impl must be one of {LSTM_IMPLS}, got {lstm_impl!r}")
        if lstm_impl == "nn" and (weight_dropout or variational_dropout):
            raise ValueError("weight_dropout and variational_dropout need lstm_impl 'fused': "
                             "torch.nn.LSTM has neither")
        if not hidden_sizes:
            raise ValueError("hidden_sizes must name at least one layer")
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.groups = nn.ModuleList()
        size_in = embed_dim
        for size, layers in layer_groups(tuple(hidden_sizes)):
            inner_dropout = dropout if layers > 1 else 0.0
            if lstm_impl == "fused":
                lstm = FusedLSTM(size_in, size, layers, batch_first=True, dropout=inner_dropout,
                                 backend=backend, weight_dropout=weight_dropout,
                                 variational_dropout=variational_dropout)
            else:
                lstm = nn.LSTM(size_in, size, layers, batch_first=True, dropout=inner_dropout)
            self.groups.append(lstm)
            size_in = size
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(size_in, vocab_size)

    def forward(self, idx: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """idx [B, T] -> logits [B, T, V], state after the last step."""
        x = self.embed(idx)  # [B, T, E]
        new_state = []
        for k, lstm in enumerate(self.groups):
            x, hc = run_lstm(lstm, x, None if state is None else state[k])
            x = self.drop(x)  # after every layer: FusedLSTM applies it between its own
            new_state.append(hc)
        return self.head(x), new_state


def zero_state(model: CharLM, batch: int, device) -> State:
    """All-zero state for `batch` sequences (float32)."""
    return [(torch.zeros(g.num_layers, batch, g.hidden_size, device=device),
             torch.zeros(g.num_layers, batch, g.hidden_size, device=device)) for g in model.groups]


def detach_state(state: State) -> State:
    """The state to carry into the next window: no graph, float32."""
    return [(h.detach().float(), c.detach().float()) for h, c in state]
