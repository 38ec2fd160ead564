"""Char-LM: corpus reading, vocabulary, split, stream batching, and the model."""

import pytest
import torch
from torch import nn

from charlm_testing import one_thread  # noqa: F401  (a fixture)
from fusedlstm.charlm.config import layer_sizes, make_config
from fusedlstm.charlm.corpus import (EvalStreams, TrainStreams, Vocabulary, builtin_text, read_text,
                                     split)
from fusedlstm.charlm.errors import CharLMError
from fusedlstm.charlm.model import CharLM, layer_groups, run_lstm
from fusedlstm.charlm.sample import CellStack


# --- corpus ---------------------------------------------------------------------------------

def test_undecodable_bytes_are_a_clear_error(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(CharLMError, match=r"not UTF-8 text: byte 0xe9 at offset 3 \(line 1\)"):
        read_text(path)


def test_empty_and_missing_files_are_clear_errors(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(CharLMError, match="is empty"):
        read_text(tmp_path / "empty.txt")
    with pytest.raises(CharLMError, match="cannot read the corpus"):
        read_text(tmp_path / "absent.txt")


def test_corpus_shorter_than_one_batch_is_a_clear_error(tmp_path):
    data = Vocabulary.of("abc").encode("abc" * 30)  # 90 characters
    with pytest.raises(CharLMError, match=r"shorter than one batch: 86 training characters, but "
                                          r"8 streams x \(seq_len 16 \+ 1\) need 136"):
        TrainStreams(split(data, 0.05), batch_size=8, seq_len=16)


def test_builtin_corpus_is_pythons_documentation():
    text = builtin_text()
    assert len(text) > 100_000
    assert "assert" in text and "lambda" in text


def test_vocabulary_round_trip_and_unknown_characters():
    vocab = Vocabulary.of("hello world")
    assert vocab.chars == " dehlorw"
    assert vocab.decode(vocab.encode("low word").tolist()) == "low word"
    with pytest.raises(CharLMError, match=r"2 character\(s\) not in the model's vocabulary of 8: 'x', 'z'"):
        vocab.encode("zox")


def test_split_is_contiguous_with_the_held_out_text_last():
    data = torch.arange(100)
    s = split(data, 0.1)
    assert (s.n_train, s.n_val) == (90, 10)
    with pytest.raises(CharLMError, match="too few"):
        split(torch.arange(5), 0.1)


# --- streams --------------------------------------------------------------------------------

def test_train_streams_continue_from_window_to_window():
    data = torch.arange(1000)
    streams = TrainStreams(split(data, 0.1), batch_size=4, seq_len=10)  # 900 / 4 = 225 per stream
    assert streams.steps_per_epoch == 22
    x0, y0, restart0 = streams.batch(0)
    x1, y1, restart1 = streams.batch(1)
    assert restart0 and not restart1
    torch.testing.assert_close(x0[:, 0], torch.tensor([0, 225, 450, 675]))
    torch.testing.assert_close(y0, x0 + 1)                     # targets are the next characters
    torch.testing.assert_close(x1[:, 0], x0[:, -1] + 1)        # window k+1 continues window k
    x22, _, restart22 = streams.batch(22)                      # a new epoch starts over
    assert restart22 and torch.equal(x22, x0)


def test_train_streams_are_shared_out_by_rank():
    s = split(torch.arange(1000), 0.1)
    whole = TrainStreams(s, batch_size=4, seq_len=10).batch(3)[0]
    parts = [TrainStreams(s, batch_size=4, seq_len=10, rank=r, world=2).batch(3)[0] for r in (0, 1)]
    assert torch.equal(torch.cat(parts), whole)
    with pytest.raises(CharLMError, match="multiple of the number of processes"):
        TrainStreams(s, batch_size=3, seq_len=10, rank=0, world=2)


def test_eval_streams_score_every_held_out_character_once_after_a_burn_in():
    data = torch.arange(1000)
    s = split(data, 0.1)                                         # held out: 900..999
    ev = EvalStreams(s, count=4, burn_in=8)
    assert ev.chars == 100
    scored = ev.targets[:, ev.scored]
    assert torch.equal(scored.flatten(), torch.arange(900, 1000))
    assert torch.equal(ev.inputs + 1, ev.targets)                # each input precedes its target
    assert torch.equal(ev.targets[0, :8], torch.arange(892, 900))  # burn-in: the text before
    parts = [EvalStreams(s, count=4, burn_in=8, rank=r, world=2) for r in (0, 1)]
    assert sorted(parts[0].targets[:, 8].tolist() + parts[1].targets[:, 8].tolist()) == [900, 925, 950, 975]


# --- configuration --------------------------------------------------------------------------

def test_presets_and_layer_sizes():
    seed = make_config("seed")
    assert (seed.hidden_sizes, seed.dropout, seed.seq_len, seed.batch_size) == ((1000, 800), 0.5, 100, 64)
    assert layer_sizes("default", [128], 3) == (128, 128, 128)
    assert layer_sizes("seed", [1000, 800, 600], None) == (1000, 800, 600)
    assert layer_sizes("default", None, 3) == (0, 0, 0)  # sized by make_config
    assert layer_sizes("small", None, 3) == (128, 128, 128)
    with pytest.raises(CharLMError, match="differ in size"):
        layer_sizes("seed", None, 3)
    with pytest.raises(CharLMError, match="unknown preset"):
        make_config("huge")
    # A budget given replaces the preset's: steps alone means no time limit.
    assert (make_config(max_steps=10).max_steps, make_config(max_steps=10).minutes) == (10, None)
    with pytest.raises(CharLMError, match="dropout"):
        make_config(dropout=1.5)
    small = make_config("small")
    assert (small.hidden_sizes, small.dropout, small.weight_dropout, small.variational_dropout) == ((128, 128), 0.1, 0, 0)


def sized(chars, tmp_path, **overrides):
    path = tmp_path / f"{chars}.txt"
    if not path.exists():
        path.write_text("x" * chars)
    return make_config(text=str(path), val_fraction=0.1, **overrides)


def test_default_preset_is_sized_to_the_corpus_and_the_budget(tmp_path):
    short_small, long_small = sized(150_000, tmp_path, minutes=1), sized(150_000, tmp_path, minutes=10)
    long_large = sized(100_000_000, tmp_path, minutes=10)
    longer_large = sized(100_000_000, tmp_path, minutes=120)
    # A longer budget trains a bigger model, up to what the text can feed.
    assert short_small.hidden_sizes[0] < long_small.hidden_sizes[0] <= long_large.hidden_sizes[0]
    assert long_large.hidden_sizes[0] < longer_large.hidden_sizes[0]
    assert sized(150_000, tmp_path, minutes=120).hidden_sizes == long_small.hidden_sizes  # the text's cap
    assert sized(20_000, tmp_path, minutes=120).hidden_sizes[0] < long_small.hidden_sizes[0]
    # More passes over the text, more regularisation; one pass or less, none.
    for field in ("dropout", "weight_dropout", "variational_dropout"):
        assert getattr(long_small, field) > getattr(long_large, field), field
    assert (long_large.weight_dropout, long_large.variational_dropout) == (0, 0)
    assert long_small.weight_dropout >= 0.3
    # A wider model takes smaller steps.
    assert long_small.lr == short_small.lr * short_small.hidden_sizes[0] / long_small.hidden_sizes[0]
    # The budget in steps counts as well as in minutes.
    assert sized(150_000, tmp_path, max_steps=10).hidden_sizes[0] == 128


def test_given_values_win_over_the_sizing(tmp_path):
    config = sized(150_000, tmp_path, minutes=10, hidden_sizes=(512,), dropout=0.05, weight_dropout=0.1)
    assert (config.hidden_sizes, config.dropout, config.weight_dropout) == ((512,), 0.05, 0.1)
    assert config.variational_dropout > 0  # sized for the model given
    assert config.lr < sized(150_000, tmp_path, minutes=10).lr  # and its width
    assert sized(150_000, tmp_path, minutes=10, lr=0.02).lr == 0.02
    three = sized(150_000, tmp_path, minutes=10, hidden_sizes=(0, 0, 0)).hidden_sizes  # --layers 3 alone
    assert len(set(three)) == 1 and len(three) == 3
    assert 128 <= three[0] <= sized(150_000, tmp_path, minutes=10).hidden_sizes[0]  # sized for 3 layers
    nn_config = sized(150_000, tmp_path, minutes=10, lstm_impl="nn")
    assert (nn_config.weight_dropout, nn_config.variational_dropout) == (0, 0)
    assert nn_config.dropout == sized(150_000, tmp_path, minutes=10).dropout
    with pytest.raises(CharLMError, match="need lstm_impl 'fused'"):
        sized(150_000, tmp_path, lstm_impl="nn", weight_dropout=0.2)
    with pytest.raises(CharLMError, match="cannot read the corpus"):
        make_config(text=str(tmp_path / "missing.txt"))
    with pytest.raises(CharLMError, match="minutes must be positive"):  # before the sizing reads it
        sized(150_000, tmp_path, minutes=-1)


# --- model ----------------------------------------------------------------------------------

def test_layer_groups():
    assert layer_groups((1000, 800)) == [(1000, 1), (800, 1)]
    assert layer_groups((256, 256)) == [(256, 2)]
    assert layer_groups((13, 7, 7)) == [(13, 1), (7, 2)]


def make_model(impl="fused", sizes=(13, 7, 7), seed=0):
    torch.manual_seed(seed)
    return CharLM(vocab_size=11, embed_dim=5, hidden_sizes=sizes, dropout=0.3, lstm_impl=impl).eval()


def test_model_shapes_with_layers_of_different_sizes(one_thread):
    model = make_model()
    assert [type(g).__name__ for g in model.groups] == ["FusedLSTM", "FusedLSTM"]
    idx = torch.randint(0, 11, (3, 9))
    logits, state = model(idx)
    assert logits.shape == (3, 9, 11)
    assert [tuple(h.shape) for h, _ in state] == [(1, 3, 13), (2, 3, 7)]


def test_nn_lstm_model_has_the_same_parameters_and_outputs(one_thread):
    fused, plain = make_model("fused"), make_model("nn")
    assert [type(g) for g in plain.groups] == [nn.LSTM, nn.LSTM]
    assert {k: v.shape for k, v in fused.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    plain.load_state_dict(fused.state_dict())
    idx = torch.randint(0, 11, (3, 9))
    torch.testing.assert_close(plain(idx)[0], fused(idx)[0], rtol=1e-5, atol=1e-5)


def test_carrying_the_state_equals_one_long_window(one_thread):
    model = make_model()
    idx = torch.randint(0, 11, (2, 12))
    whole, _ = model(idx)
    first, state = model(idx[:, :5])
    second, _ = model(idx[:, 5:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["fused", "nn"])
def test_cell_stack_steps_reproduce_the_layer_forward(impl, one_thread):
    model = make_model(impl)
    stack = CellStack(model)
    # The cells hold the layers' own parameters (shared storage, no copies).
    assert stack.cells[2].weight_hh.data_ptr() == model.groups[1].weight_hh_l1.data_ptr()
    idx = torch.randint(0, 11, (2, 6))
    with torch.no_grad():
        expected, _ = model(idx)
        _, state = model(idx[:, :1])
        cell_state = CellStack.per_layer(state)
        for t in range(1, 6):
            logits, cell_state = stack.step(idx[:, t], cell_state)
            torch.testing.assert_close(logits, expected[:, t], rtol=1e-5, atol=1e-5)


def test_bf16_autocast_runs_the_lstm_in_bf16_with_float32_gradients(one_thread):
    """Under autocast the LSTM runs on bf16 copies of its weights; its error against
    float32 is at most twice that of nn.LSTM run the same way."""
    fused, plain = make_model("fused", (32,)), make_model("nn", (32,))
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(4, 20, 5)
    reference, _ = plain.groups[0](x)
    outputs = {}
    for name, model in (("fused", fused), ("nn", plain)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, (h, c) = run_lstm(model.groups[0], x, None)
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()
        assert model.groups[0].weight_hh_l0.grad.dtype == torch.float32
        outputs[name] = (out.float() - reference).abs().max().item()
    assert 0 < outputs["fused"] <= 2 * outputs["nn"]
