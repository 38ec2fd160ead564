"""pytorch/examples' word_language_model as a user runs it with FusedLSTM in
place of nn.LSTM (tests/word_lm.py), on a small synthetic corpus: two
training steps, the whole model saved with torch.save, loaded in a fresh
process with torch.load's default weights_only=True, evaluated and sampled
there, and exported to ONNX there; the exported model run in ONNX Runtime."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import word_lm

TESTS = Path(__file__).resolve().parent
NTOKENS, BPTT = 40, 7


def corpus(n: int = 1200) -> torch.Tensor:
    """Token ids with structure to learn: each usually 3 past the previous one."""
    g = torch.Generator().manual_seed(0)
    steps = 3 + torch.randint(0, 2, (n,), generator=g)
    return torch.cumsum(steps, 0) % NTOKENS


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    tokens = corpus()
    train_data, eval_data = word_lm.batchify(tokens[:1000], 4), word_lm.batchify(tokens[1000:], 2)
    model = word_lm.RNNModel(NTOKENS, 16, 16, 2, dropout=0.2)
    before = copy.deepcopy(model.state_dict())
    losses = word_lm.train(model, train_data, steps=2, bptt=BPTT)
    folder = tmp_path_factory.mktemp("word_lm")
    torch.save(model, folder / "model.pt")
    torch.save(eval_data, folder / "eval.pt")
    return dict(model=model, before=before, losses=losses, folder=folder, eval_data=eval_data)


def run_fresh(code: str, *args) -> dict:
    """Runs `code` in a new Python process (tests/ importable, torch's thread count
    the same as here) and returns the JSON it prints last."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    prologue = f"import torch\ntorch.set_num_threads({torch.get_num_threads()})\n"
    done = subprocess.run([sys.executable, "-c", prologue + code, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


LOAD = """
import json, sys
import fusedlstm, word_lm
with torch.serialization.safe_globals(word_lm.SAFE_GLOBALS):
    model = torch.load(sys.argv[1])  # weights_only=True, torch's default
"""


def test_two_training_steps_train_the_model(trained):
    assert len(trained["losses"]) == 2 and all(math.isfinite(x) for x in trained["losses"])
    after = trained["model"].state_dict()
    for name, value in trained["before"].items():
        assert not torch.equal(after[name], value), f"{name} did not change"


def test_saved_model_loads_evaluates_and_generates_in_a_fresh_process(trained):
    result = run_fresh(LOAD + """
eval_data = torch.load(sys.argv[2])
print(json.dumps({"rnn": type(model.rnn).__name__, "loss": word_lm.evaluate(model, eval_data),
                  "words": word_lm.generate(model, 30, seed=5)}))
""", trained["folder"] / "model.pt", trained["folder"] / "eval.pt")
    model = copy.deepcopy(trained["model"])
    assert result["rnn"] == "FusedLSTM"
    assert result["loss"] == pytest.approx(word_lm.evaluate(model, trained["eval_data"]), rel=1e-5)
    assert result["words"] == word_lm.generate(model, 30, seed=5)


@pytest.mark.slow
def test_model_exported_in_a_fresh_process_runs_in_onnx_runtime(trained):
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (pip install '.[test]')")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install '.[test]')")
    path = trained["folder"] / "model.onnx"
    # As the example exports: eval(), a zero [bptt, 1] token input, a zero state.
    run_fresh(LOAD + """
model.eval()
tokens = torch.zeros(int(sys.argv[3]), 1, dtype=torch.long)
torch.onnx.export(model, (tokens, model.init_hidden(1)), sys.argv[2])
print(json.dumps({}))
""", trained["folder"] / "model.pt", path, BPTT)
    session = ort.InferenceSession(str(path))
    model = copy.deepcopy(trained["model"]).eval()
    tokens = corpus()[:BPTT].view(BPTT, 1)
    hidden = tuple(torch.randn(h.shape, generator=torch.Generator().manual_seed(k))
                   for k, h in enumerate(model.init_hidden(1)))
    feeds = {i.name: v.numpy() for i, v in zip(session.get_inputs(), (tokens, *hidden))}
    actual = session.run(None, feeds)
    with torch.no_grad():
        output, (h_n, c_n) = model(tokens, hidden)
    for a, e in zip(actual, (output, h_n, c_n)):
        torch.testing.assert_close(torch.from_numpy(a), e, rtol=1e-5, atol=1e-5)
