"""Char-LM sampling: seeds, temperature, top-k, priming text, and the cell-by-cell path."""

import pytest
import torch

from charlm_testing import make_corpus, tiny_config
from fusedlstm import cli
from fusedlstm.charlm import checkpoint as ckpt
from fusedlstm.charlm.errors import CharLMError
from fusedlstm.charlm.sample import default_prime, generate, load_model, pick, sample
from fusedlstm.charlm.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small model trained for a few seconds (two layers of different sizes)."""
    folder = tmp_path_factory.mktemp("sampling")
    make_corpus(folder / "words.txt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(tiny_config(folder / "words.txt", folder / "run", hidden_sizes=(40, 24), max_steps=80,
                          eval_interval=40), progress=False)
    finally:
        torch.set_num_threads(threads)
    return folder / "run"


def text_of(run, **kwargs):
    prime, stream = sample(run, **kwargs)
    return prime, "".join(stream)


def test_a_fixed_seed_gives_the_same_text(run):
    first = text_of(run, length=60, seed=7)
    assert first == text_of(run, length=60, seed=7)
    assert len(first[1]) == 60
    assert text_of(run, prime=first[0], length=60, seed=8) != first


def test_temperature_zero_is_greedy_decoding_by_the_full_model(run):
    """Greedy text from the cell-by-cell generator equals argmax decoding that reruns
    the whole layer-by-layer model on the growing text at every step."""
    prime = "Ka lo"
    _, greedy = text_of(run, prime=prime, length=25, temperature=0, seed=1)
    assert text_of(run, prime=prime, length=25, temperature=0, seed=2)[1] == greedy
    model, vocab = load_model(ckpt.load(run), torch.device("cpu"))
    text = prime
    with torch.no_grad():
        for _ in range(25):
            logits, _ = model(vocab.encode(text)[None])
            text += vocab.chars[int(logits[0, -1].argmax())]
    assert greedy == text[len(prime):]
    assert text_of(run, prime=prime, length=25, temperature=0.7, top_k=1, seed=3)[1] == greedy


def test_top_k_draws_only_among_the_k_most_likely():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.5, -1.0, 2.0])
    generator = torch.Generator().manual_seed(0)
    drawn = {pick(logits, 1.5, 3, generator) for _ in range(300)}
    assert drawn == {1, 3, 5}
    assert {pick(logits, 100.0, None, generator) for _ in range(300)} == set(range(6))


def test_priming_text_outside_the_vocabulary_is_a_clear_error(run):
    with pytest.raises(CharLMError, match=r"2 character\(s\) the model never saw: '#', 'é'"):
        sample(run, prime="ka é lo #")


def test_bad_settings_are_clear_errors(run):
    model, vocab = load_model(ckpt.load(run), torch.device("cpu"))
    with pytest.raises(CharLMError, match="temperature must be >= 0"):
        generate(model, vocab, "ka", temperature=-0.5)
    with pytest.raises(CharLMError, match="top-k must be at least 1"):
        generate(model, vocab, "ka", top_k=0)
    with pytest.raises(CharLMError, match="priming text is empty"):
        generate(model, vocab, "")


def test_default_prime_is_a_seeded_slice_of_the_held_out_text(run):
    checkpoint = ckpt.load(run)
    prime = default_prime(checkpoint, seed=4)
    assert len(prime) == 100 and prime in checkpoint["prime_pool"]
    assert default_prime(checkpoint, seed=4) == prime


def test_sample_command_streams_text_and_reports_errors(run, capsys):
    assert cli.main(["sample", "--checkpoint", str(run), "--prime", "Ka", "--length", "30", "--seed", "2",
                     "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Ka") and len(out) == 2 + 30 + 1
    assert cli.main(["sample", "--checkpoint", str(run), "--prime", "Ka", "--temperature", "-1"]) == 1
    assert "fusedlstm sample: error: temperature must be >= 0" in capsys.readouterr().err
    assert cli.main(["sample", "--checkpoint", str(run / "absent.pt")]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
