"""Models, inputs and the timed call of one (case, provider).

Every provider of a case gets the same weights (the fusedlstm modules are
copies of the nn.LSTM ones, built from one seed) and the same inputs (drawn
from one seeded generator, standard normal: never all zeros).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from ..cell import FusedLSTMCell
from ..lstm import FusedLSTM
from .cases import BASELINE, Case, Shape

SEED = 1234


@dataclass
class Workload:
    """One provider's timed call for one case.

    prepare() runs outside the timed region before every timed call and
    returns what run() takes (for "backward": the output of a fresh forward);
    run(arg) is the timed region; forward_output() is a detached forward
    result, to compare providers with each other.
    """

    prepare: Callable[[], Any]
    run: Callable[[Any], Any]
    forward_output: Callable[[], Tensor]


def nn_modules(shape: Shape, dtype: torch.dtype, device: str) -> list[nn.Module]:
    """The baseline's modules: nn.LSTM per entry of shape.stack, or for
    "generate" one nn.LSTMCell per layer."""
    torch.manual_seed(SEED)
    if shape.kind == "generate":
        modules = [nn.LSTMCell(input_size if layer == 0 else hidden, hidden)
                   for input_size, hidden, layers in shape.stack for layer in range(layers)]
    else:
        modules = [nn.LSTM(input_size, hidden, layers) for input_size, hidden, layers in shape.stack]
    return [m.to(device=device, dtype=dtype) for m in modules]


def provider_modules(shape: Shape, provider: str, dtype: torch.dtype, device: str) -> list[nn.Module]:
    modules = nn_modules(shape, dtype, device)
    if provider == BASELINE:
        return modules
    if shape.kind == "generate":
        return [FusedLSTMCell.from_lstm_cell(m, backend=provider) for m in modules]
    return [FusedLSTM.from_lstm(m, backend=provider) for m in modules]


def make_input(shape: Shape, dtype: torch.dtype, device: str) -> tuple[Tensor, Tensor | PackedSequence]:
    """(leaf, module input): a leaf that requires grad (except for inference
    kinds), and what the first module takes -- the leaf itself ([T, B, I] or,
    for "generate", [B, I]), or a PackedSequence whose data is the leaf ([N, I])."""
    generator = torch.Generator().manual_seed(SEED)
    T, B, I = shape.steps, shape.batch, shape.input_size
    if shape.kind == "generate":
        leaf = torch.randn(B, I, generator=generator, dtype=dtype).to(device)
        return leaf, leaf
    x = torch.randn(T, B, I, generator=generator, dtype=dtype).to(device)
    if shape.kind == "inference":
        return x, x
    if shape.kind == "sequence":
        leaf = x.requires_grad_()
        return leaf, leaf
    lengths = torch.randint(shape.min_length, T + 1, (B,), generator=generator)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    # A leaf of its own, so that packing stays outside the timed region.
    leaf = packed.data.detach().requires_grad_()
    return leaf, PackedSequence(leaf, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)


def build(case: Case, provider: str) -> Workload:
    """The workload of `provider` for `case` (raises if the provider cannot
    build it: see cases.skip_reason first)."""
    modules = provider_modules(case.shape, provider, case.dtype, case.device)
    leaf, module_input = make_input(case.shape, case.dtype, case.device)
    if case.shape.kind == "generate":
        return generation_workload(case, modules, leaf)
    if case.shape.kind == "inference":
        return inference_workload(case, modules, leaf)
    return sequence_workload(case, modules, leaf, module_input)


def sequence_workload(case: Case, modules: list[nn.Module], leaf: Tensor, module_input) -> Workload:
    params = [p for m in modules for p in m.parameters()]

    def forward() -> Tensor:
        h = module_input
        for module in modules:
            h, _ = module(h)
        return h.data if isinstance(h, PackedSequence) else h

    # The gradient fed to backward: random, fixed, the output's shape
    # ([T, B, H] dense, [N, H] packed; H of the last module).
    out_shape = (*leaf.shape[:-1], case.shape.stack[-1][1])
    generator = torch.Generator().manual_seed(SEED + 1)
    grad_output = torch.randn(out_shape, generator=generator, dtype=case.dtype).to(case.device)

    def clear_grads() -> None:
        # As optimizer.zero_grad() does by default: backward allocates them anew.
        for t in (*params, leaf):
            t.grad = None

    def backward(output: Tensor) -> None:
        output.backward(grad_output)

    def forward_output() -> Tensor:
        with torch.no_grad():
            return forward().detach()

    if case.mode == "forward":
        return Workload(prepare=lambda: None, run=lambda _: forward(), forward_output=forward_output)
    if case.mode == "backward":
        def prepare() -> Tensor:
            clear_grads()
            return forward()
        return Workload(prepare=prepare, run=backward, forward_output=forward_output)
    if case.mode == "forward+backward":
        return Workload(prepare=clear_grads, run=lambda _: backward(forward()),
                        forward_output=forward_output)
    raise ValueError(f"unknown mode {case.mode!r}")


def _initial_states(case: Case, shapes: list[tuple[int, ...]]) -> list[tuple[Tensor, Tensor]]:
    """A seeded random (h, c) per module, of the given shapes."""
    if case.mode != "forward":
        raise ValueError(f"{case.shape.kind} shapes time inference only, not {case.mode!r}")
    generator = torch.Generator().manual_seed(SEED + 2)
    return [tuple(torch.randn(shape, generator=generator, dtype=case.dtype).to(case.device)
                  for _ in range(2)) for shape in shapes]


def generation_workload(case: Case, cells: list[nn.Module], x: Tensor) -> Workload:
    """One step of the cell stack per call, x [B, I] in; the state (h, c) of
    every layer carried from one call to the next, as when sampling."""
    initial = _initial_states(case, [(case.shape.batch, cell.hidden_size) for cell in cells])
    state = list(initial)

    def step(states: list) -> Tensor:
        h = x
        with torch.no_grad():
            for k, cell in enumerate(cells):
                states[k] = cell(h, states[k])
                h = states[k][0]
        return h

    return Workload(prepare=lambda: None, run=lambda _: step(state),
                    forward_output=lambda: step(list(initial)))


def inference_workload(case: Case, lstms: list[nn.Module], x: Tensor) -> Workload:
    """The LSTM modules in eval() under no_grad over x [T, B, I] per call, each
    module's state (h, c) carried from one call to the next (as an evaluation
    loop over consecutive windows, or generation with T=1, does)."""
    for lstm in lstms:
        lstm.eval()
    initial = _initial_states(case, [(lstm.num_layers, case.shape.batch, lstm.hidden_size)
                                     for lstm in lstms])
    state = list(initial)

    def forward(states: list) -> Tensor:
        h = x
        with torch.no_grad():
            for k, lstm in enumerate(lstms):
                h, states[k] = lstm(h, states[k])
        return h

    return Workload(prepare=lambda: None, run=lambda _: forward(state),
                    forward_output=lambda: forward(list(initial)))
