"""Char-LM training: learning, metrics, checkpoints, resuming, stopping, divergence,
several processes, and the command line end to end (CPU; small generated corpora)."""

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from charlm_testing import make_corpus, one_thread, python, subprocess_env, tiny_config, unigram_entropy  # noqa: F401
from fusedlstm import cli
from fusedlstm.charlm import checkpoint as ckpt
from fusedlstm.charlm.errors import CharLMError, TrainingDiverged
from fusedlstm.charlm.model import CharLM
from fusedlstm.charlm.train import learning_rate, make_optimizer, resume, train

FIELDS = {"step", "train_loss", "val_loss", "val_bpc", "chars_per_sec", "elapsed_s", "lr"}


def losses(run_dir):
    """[(step, train_loss, val_loss)] of a run folder's metrics.jsonl."""
    lines = (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in lines]


def wait_for_lines(run_dir, count, process, timeout=90):
    path = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        assert process.poll() is None, f"training ended early: {process.communicate()}"
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"no {count} metrics lines within {timeout} s")


def train_command(text, out, *extra):
    return [python(), "-m", "fusedlstm", "train", "--text", str(text), "--out", str(out),
            "--embed", "16", "--hidden", "48", "--layers", "1", "--dropout", "0.2", "--weight-dropout", "0",
            "--variational-dropout", "0", "--seq-len", "16",
            "--batch-size", "8", "--lr", "0.01", "--device", "cpu", "--seed", "5", *extra]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "words.txt"
    return path, make_corpus(path)


def test_loss_falls_well_below_the_unigram_entropy(corpus, tmp_path, one_thread):
    path, text = corpus
    result = train(tiny_config(path, tmp_path / "run", max_steps=150, eval_interval=50), progress=False)
    held_out = text[-int(len(text) * 0.05):]
    assert result.stopped == "max_steps" and result.step == 150
    # Word spellings are learnable: well below what character frequencies alone give.
    assert result.best_val_loss < 0.7 * unigram_entropy(held_out), (result.best_val_loss, unigram_entropy(held_out))

    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [50, 100, 150]
    assert all(set(r) == FIELDS for r in records)
    assert all(r["chars_per_sec"] > 0 and r["train_loss"] > 0 for r in records)
    assert records[-1]["val_bpc"] == pytest.approx(records[-1]["val_loss"] / math.log(2))
    assert (tmp_path / "run" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    best = ckpt.load(tmp_path / "run")  # weights_only=True inside
    assert best["step"] == result.best_step and best["vocab"] == "".join(sorted(set(text)))
    assert best["config"]["hidden_sizes"] == [48]
    assert set(best) >= {"model", "optimizer", "rng", "train_state", "progress", "config", "vocab"}


def test_learning_rate_warms_up_then_decays_to_its_floor():
    config = tiny_config("x", "y", lr=1.0, warmup_steps=10, min_lr_ratio=0.1, max_steps=110)
    assert learning_rate(config, 0, 110) == pytest.approx(0.1)
    assert learning_rate(config, 9, 110) == pytest.approx(1.0)
    assert learning_rate(config, 60, 110) == pytest.approx(0.55)
    assert learning_rate(config, 110, 110) == pytest.approx(0.1)
    assert learning_rate(config, 60, None) == 1.0  # a time budget not planned yet


@pytest.mark.slow
def test_a_time_budget_is_spent_even_when_the_first_steps_are_slow(corpus, tmp_path, monkeypatch, one_thread):
    """The cosine's horizon is re-planned at every evaluation from the latest speed: a
    plan made once from slow first steps (as a fresh process's are) ended a 10-minute
    run after 392 s."""
    path, _ = corpus
    forward, calls = CharLM.forward, []

    def slow_start(self, idx, state=None):
        if self.training:
            calls.append(1)
            if len(calls) <= 20:
                time.sleep(0.03)
        return forward(self, idx, state)

    monkeypatch.setattr(CharLM, "forward", slow_start)
    budget_s = 3.0
    result = train(tiny_config(path, tmp_path / "run", max_steps=None, minutes=budget_s / 60, eval_interval=10),
                   progress=False)
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert result.stopped == "time"
    assert last["elapsed_s"] >= 0.75 * budget_s, last
    assert ckpt.load(tmp_path / "run" / ckpt.LAST)["progress"]["planned_steps"] >= result.step


def test_nn_lstm_and_bf16_runs_use_the_same_training_code(corpus, tmp_path, one_thread):
    path, _ = corpus
    for name, overrides in (("nn", dict(lstm_impl="nn")), ("bf16", dict(precision="bf16"))):
        train(tiny_config(path, tmp_path / name, max_steps=40, eval_interval=20, **overrides),
              progress=False)
        (first, *_, last) = losses(tmp_path / name)
        assert last[2] < first[2] < math.log(len(set(path.read_text()))), name


def test_regularised_run_learns_and_keeps_its_settings(corpus, tmp_path, one_thread):
    path, _ = corpus
    result = train(tiny_config(path, tmp_path / "run", max_steps=60, eval_interval=20, weight_dropout=0.3,
                               variational_dropout=0.2, weight_decay=0.1), progress=False)
    (first, *_, last) = losses(tmp_path / "run")
    assert last[2] < first[2] < math.log(len(set(path.read_text())))
    lstm = result.model.groups[0]
    assert (lstm.weight_dropout, lstm.variational_dropout) == (0.3, 0.2)
    saved = ckpt.load(tmp_path / "run" / ckpt.LAST)
    assert (saved["config"]["weight_dropout"], saved["config"]["weight_decay"]) == (0.3, 0.1)
    resumed = resume(tmp_path / "run", progress=False, max_steps=80)
    assert resumed.step == 80 and resumed.model.groups[0].weight_dropout == 0.3


def test_weight_decay_shrinks_weight_matrices_only():
    """Decoupled decay: with zero gradients Adam's own update is 0, so one step multiplies
    every weight matrix by 1 - lr * weight_decay and leaves the biases alone."""
    config = tiny_config("x", "y", lr=0.1, weight_decay=0.5)
    model = CharLM(7, 4, (6,), lstm_impl="fused")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = make_optimizer(model, config, torch.device("cpu"))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        factor = 0.95 if p.dim() >= 2 else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, msg=name)
    plain = make_optimizer(model, tiny_config("x", "y"), torch.device("cpu"))
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["weight_decay"] == 0


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    ckpt.save_atomic({"format": ckpt.FORMAT, "step": 1}, target)

    def failing_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_atomic({"format": ckpt.FORMAT, "step": 2}, target)
    assert ckpt.load(target)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(CharLMError, match="expected best.pt or last.pt"):
        ckpt.load(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CharLMError, match=r"the checkpoint '.*junk.pt' is damaged"):
        ckpt.load(tmp_path / "junk.pt")


@pytest.mark.slow
def test_sigint_saves_and_resume_gives_the_uninterrupted_losses(corpus, tmp_path, one_thread):
    """Ctrl-C mid-run saves last.pt and exits 0; --resume then reproduces exactly the
    losses of a run that was never interrupted (weights, Adam, carried state, RNG and
    the running train-loss sums all restored; one CPU thread, so the same arithmetic)."""
    path, _ = corpus
    run = tmp_path / "interrupted"
    process = subprocess.Popen(train_command(path, run, "--max-steps", "300", "--eval-interval", "5"),
                               env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_lines(run, 2, process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    stopped = ckpt.load(run / ckpt.LAST)["step"]
    assert f"stopped at step {stopped} on request" in err
    assert 10 <= stopped < 300, "the run should have been interrupted mid-way"

    result = resume(run, progress=False)
    assert (result.step, result.stopped) == (300, "max_steps")

    args = dict(embed_dim=16, hidden_sizes=(48,), dropout=0.2, seq_len=16, batch_size=8, lr=0.01, seed=5,
                max_steps=300, eval_interval=5, eval_streams=32, warmup_steps=50, precision="auto")
    train(tiny_config(path, tmp_path / "straight", **args), progress=False)
    assert losses(run) == losses(tmp_path / "straight")


@pytest.mark.slow
def test_a_killed_runs_checkpoints_still_load_and_resume(corpus, tmp_path, one_thread):
    """SIGKILL at any moment (here while it saves at every step) leaves whole files."""
    path, _ = corpus
    run = tmp_path / "killed"
    process = subprocess.Popen(train_command(path, run, "--max-steps", "2000", "--eval-interval", "1"),
                               env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_lines(run, 5, process)
    process.kill()
    process.communicate(timeout=30)
    last, best = ckpt.load(run / ckpt.LAST), ckpt.load(run / ckpt.BEST)
    assert last["step"] >= 4 and best["step"] <= last["step"]
    result = resume(run, progress=False, max_steps=last["step"] + 3)
    assert result.step == last["step"] + 3
    assert not list(run.glob(".*.tmp"))  # what the kill left half-written is gone
    assert [s for s, _, _ in losses(run)] == list(range(1, last["step"] + 4))


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch,
                                                                          one_thread):
    path, _ = corpus
    forward, calls = CharLM.forward, []

    def poisoned(self, idx, state=None):
        logits, state = forward(self, idx, state)
        if self.training:
            calls.append(1)
            if len(calls) == 15:
                logits = logits * float("nan")
        return logits, state

    monkeypatch.setattr(CharLM, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"training diverged at step 15: loss nan.*the last good "
                                               r"checkpoint, .*last.pt \(step 10\), is kept"):
        train(tiny_config(path, tmp_path / "run", max_steps=30, eval_interval=10), progress=False)
    last = ckpt.load(tmp_path / "run" / ckpt.LAST)
    assert last["step"] == 10
    assert all(torch.isfinite(t).all() for t in last["model"].values())


def test_runs_refuse_to_overwrite_or_change_architecture_on_resume(corpus, tmp_path, one_thread):
    path, _ = corpus
    train(tiny_config(path, tmp_path / "run", max_steps=10), progress=False)
    with pytest.raises(CharLMError, match="already holds a run"):
        train(tiny_config(path, tmp_path / "run", max_steps=10), progress=False)
    with pytest.raises(CharLMError, match=r"hidden_sizes \(run: \(48,\), given: \(64,\)\)"):
        resume(tmp_path / "run", hidden_sizes=(64,))
    assert resume(tmp_path / "run", progress=False).stopped == "already done"
    with pytest.raises(CharLMError, match="nothing to resume"):
        resume(tmp_path / "absent")


def test_resuming_a_gpu_run_without_a_gpu_says_to_pass_device_cpu(corpus, tmp_path, one_thread, monkeypatch):
    path, _ = corpus
    train(tiny_config(path, tmp_path / "run", max_steps=5), progress=False)
    last = ckpt.load(tmp_path / "run" / ckpt.LAST)
    last["config"]["device"] = "cuda"  # as written by a run on a GPU machine
    ckpt.save_atomic(last, tmp_path / "run" / ckpt.LAST)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CharLMError, match="trained with --device cuda.*pass --device cpu"):
        resume(tmp_path / "run", max_steps=6)
    assert resume(tmp_path / "run", max_steps=6, device="cpu", progress=False).model.head.weight.device.type == "cpu"


@pytest.mark.slow
def test_two_process_torchrun_keeps_replicas_identical_and_matches_one_process(corpus, tmp_path, one_thread):
    """gloo DDP, 2 processes x 4 streams against 1 process x 8 streams (no dropout):
    same losses up to float32 summation order (seen: relative differences ~5e-8)."""
    path, _ = corpus
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import os, sys\n"
        "import torch\n"
        "from charlm_testing import tiny_config\n"
        "from fusedlstm.charlm.train import train\n"
        "torch.set_num_threads(1)\n"
        "text, out, weights = sys.argv[1:4]\n"
        "result = train(tiny_config(text, out, max_steps=12, eval_interval=3), progress=False)\n"
        "torch.save(result.model.state_dict(), os.path.join(weights, f\"rank{os.environ['RANK']}.pt\"))\n")
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    result = subprocess.run([python(), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(driver), str(path), str(tmp_path / "ddp"), str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)

    single = train(tiny_config(path, tmp_path / "single", max_steps=12, eval_interval=3), progress=False)
    ddp_losses, single_losses = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert [s for s, _, _ in ddp_losses] == [3, 6, 9, 12]
    for (step, train_a, val_a), (_, train_b, val_b) in zip(ddp_losses, single_losses):
        assert train_a == pytest.approx(train_b, rel=1e-6) and val_a == pytest.approx(val_b, rel=1e-6), step
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(rank0[name], value, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_command_line_trains_then_samples(corpus, tmp_path, capsys):
    path, text = corpus
    run = tmp_path / "run"
    trained = subprocess.run(train_command(path, run, "--max-steps", "30", "--eval-interval", "10"),
                             env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr
    assert "best validation loss" in trained.stdout and "bpc" in trained.stdout
    assert "step 30: train" in trained.stderr
    sampled = subprocess.run([python(), "-m", "fusedlstm", "sample", "--checkpoint", str(run), "--length", "40",
                              "--seed", "3", "--device", "cpu"],
                             env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert sampled.returncode == 0, sampled.stderr
    output = sampled.stdout[:-1]  # a final newline
    prime = output[:-40]
    assert prime and prime in text[-int(len(text) * 0.05):]  # by default, a slice of the held-out text
    assert set(output[-40:]) <= set(text)

    assert cli.main(["train", "--text", str(tmp_path / "none.txt"), "--max-steps", "1"]) == 1
    assert "fusedlstm train: error: cannot read the corpus" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "--max-steps", "1"]) == 1
    assert "--resume needs --out RUN_DIR" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.cuda
def test_gpu_run_in_bf16_and_its_checkpoint_loads_on_a_cpu_only_machine(corpus, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    path, _ = corpus
    result = train(tiny_config(path, tmp_path / "gpu", device="cuda", precision="auto", max_steps=40,
                               eval_interval=20), progress=False)
    assert result.model.head.weight.is_cuda and math.isfinite(result.best_val_loss)
    (first, *_, last) = losses(tmp_path / "gpu")
    assert last[2] < first[2]
    env = dict(subprocess_env(), CUDA_VISIBLE_DEVICES="")
    sampled = subprocess.run([python(), "-m", "fusedlstm", "sample", "--checkpoint", str(tmp_path / "gpu"),
                              "--length", "20", "--seed", "1"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert sampled.returncode == 0, sampled.stderr
    resumed = subprocess.run([python(), "-m", "fusedlstm", "train", "--out", str(tmp_path / "gpu"), "--resume",
                              "--device", "cpu", "--max-steps", "45"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
