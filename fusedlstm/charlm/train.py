"""Training: truncated back-propagation through time over contiguous streams.

    train(make_config(...))          a new run in a new run folder
    resume("runs/x", max_steps=...)  continue a run exactly where it stopped

Each step reads the next window of every stream ([B, T], see corpus.py),
starts from the state the previous window ended in (detached), and takes one
Adam step with the global gradient norm clipped; the learning rate warms up
linearly, then follows a cosine to lr * min_lr_ratio at the end of the
budget. Under torchrun every process runs this same loop on its slice of the
streams, DistributedDataParallel averages the gradients, and decisions (stop,
divergence) are taken on values summed over processes so all agree; rank 0
alone writes the run folder:

    metrics.jsonl   one line per evaluation (see metrics.FIELDS)
    loss.png        the loss curves
    best.pt         the checkpoint of the best validation loss
    last.pt         the latest checkpoint (every evaluation, the end, Ctrl-C)
    config.json     the configuration, for people

A checkpoint holds the weights, Adam's state, the step, the carried stream
state, every process's RNG states, the vocabulary, the configuration and the
counters of the run, so that resuming reproduces the uninterrupted run's
losses exactly (same device type and process count).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint as ckpt
from . import distributed
from .config import BUDGET, TrainConfig, resumed_config
from .corpus import EvalStreams, TrainStreams, Vocabulary, fingerprint, load_corpus, split
from .errors import CharLMError, TrainingDiverged
from .metrics import MetricsLog, bits, plot
from .model import CharLM, detach_state, zero_state

PRIME_POOL_CHARS = 10_000  # validation text kept in checkpoints for sampling's default prime
PLOT_EVERY_S = 30.0        # loss.png is redrawn at most this often (and at the end)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_val_loss: float | None
    best_step: int | None
    stopped: str          # "max_steps", "time", "interrupted" or "already done"
    model: CharLM
    main_process: bool    # rank 0 (the one that reports) or a single process


def train(config: TrainConfig, progress: bool = True, overwrite: bool = False) -> TrainResult:
    """A new run with `config`; its folder is config.out or runs/charlm-<time>.
    `overwrite` deletes the files of a run already in that folder first."""
    return _session(config, None, progress, overwrite)


def resume(run_dir: str | Path, progress: bool = True, **overrides) -> TrainResult:
    """Continue the run in `run_dir` from its last.pt (best.pt when only that is
    left). The folder is known by what it holds, however its path is spelled and
    wherever it was moved (an `out` override is ignored). A run that stopped
    before its first checkpoint starts over from step 0 with the configuration
    in its config.json. `overrides` may change the budget, device, backend and
    precision (config.RESUMABLE_CHANGES); a new budget restarts the cosine
    schedule's horizon from the current step."""
    run_dir = Path(run_dir)
    overrides.pop("out", None)
    if overrides.get("text") is not None:
        overrides["text"] = str(Path(overrides["text"]).resolve())
    if any((run_dir / name).is_file() for name in (ckpt.LAST, ckpt.BEST)):
        file = ckpt.resolve(run_dir, ckpt.LAST)
        checkpoint = ckpt.load(file, needs=ckpt.RESUMING_KEYS)
        with ckpt.reading(file, "configuration, vocabulary or corpus record"):
            saved = TrainConfig.from_dict(checkpoint["config"])
            Vocabulary(checkpoint["vocab"])
            str(checkpoint["corpus"]["sha256"])
    else:
        checkpoint, saved = None, _unstarted_run_config(run_dir)
    config = dataclasses.replace(resumed_config(saved, **overrides), out=str(run_dir))
    if config.device == "cuda" and not torch.cuda.is_available():
        raise CharLMError(f"the run in {str(run_dir)!r} was trained with --device cuda, and no CUDA GPU "
                          "is visible to PyTorch here; pass --device cpu to continue it on the CPU")
    if checkpoint is None:
        print(f"fusedlstm: {str(run_dir)!r} has no checkpoint (the run stopped before its first): "
              "starting it over from step 0", file=sys.stderr)
        return _session(config, None, progress, overwrite=True)
    if any(overrides.get(k) is not None for k in BUDGET):
        checkpoint["progress"]["planned_steps"] = None
    return _session(config, checkpoint, progress)


def _unstarted_run_config(run_dir: Path) -> TrainConfig:
    """The configuration of a run that wrote no checkpoint, from its config.json."""
    source = run_dir / "config.json"
    if not (run_dir / "metrics.jsonl").is_file() and not source.is_file():
        raise CharLMError(f"nothing to resume: no {ckpt.LAST} or {ckpt.BEST} in {str(run_dir)!r}")
    try:
        return TrainConfig.from_dict(json.loads(source.read_text()))
    except (OSError, ValueError, TypeError, CharLMError) as error:
        raise CharLMError(f"nothing to resume in {str(run_dir)!r}: it has no checkpoint, and its "
                          f"config.json cannot be read ({ckpt.first_sentence(error)}); start the run "
                          "over with --overwrite") from None


def _session(config: TrainConfig, checkpoint: dict | None, progress: bool,
             overwrite: bool = False) -> TrainResult:
    group, device = distributed.start(config.device)
    try:
        if config.lstm_impl == "fused":
            distributed.check_backend(config.backend, device)
        return _Trainer(config, checkpoint, group, device, progress, overwrite).run()
    finally:
        distributed.finish(group)


def learning_rate(config: TrainConfig, step: int, horizon: int | None) -> float:
    """Learning rate of 0-based step `step`: linear warm-up over warmup_steps, then a
    cosine from lr to lr * min_lr_ratio at step `horizon` (constant lr until a
    time-budgeted run has planned its horizon)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if horizon is None:
        return config.lr
    done = min(1.0, (step - config.warmup_steps) / max(1, horizon - config.warmup_steps))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * done)))


def make_optimizer(model: CharLM, config: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam; with weight_decay, AdamW's decoupled decay on the weight matrices (embedding,
    LSTM and output weights), none on biases. One parameter group without decay, so that
    checkpoints of runs without it keep their layout."""
    groups: list = list(model.parameters())
    if config.weight_decay:
        groups = [{"params": [p for p in groups if p.dim() >= 2], "weight_decay": config.weight_decay},
                  {"params": [p for p in groups if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.Adam(groups, lr=config.lr, decoupled_weight_decay=True, fused=device.type == "cuda")


# --- random number generators ----------------------------------------------------------------

def rng_state(device: torch.device) -> dict:
    """Every generator a run may draw from, as checkpoint-safe values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }


def set_rng_state(saved: dict, device: torch.device) -> None:
    torch.set_rng_state(saved["torch"])
    if device.type == "cuda" and saved["cuda"] is not None:
        torch.cuda.set_rng_state(saved["cuda"], device)
    name, keys, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# --- stopping on request ---------------------------------------------------------------------

class StopRequest:
    """SIGINT (Ctrl-C) or SIGTERM asks the loop to stop after the current step and save;
    a second Ctrl-C aborts at once (the files on disk stay whole)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True  # only a flag: the loop reports it outside the handler

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --- the run folder --------------------------------------------------------------------------

RUN_FILES = (ckpt.BEST, ckpt.LAST, "metrics.jsonl", "loss.png", "config.json")


@contextlib.contextmanager
def writing(run_dir: Path):
    """OSError while creating or writing the run folder -> CharLMError naming it."""
    try:
        yield
    except OSError as error:
        raise CharLMError(f"cannot write the run folder {str(run_dir)!r}: {error.strerror or error} "
                          f"({error.filename or run_dir}); give another --out") from None


def prepare_run_dir(run_dir: Path, resumed_step: int | None, overwrite: bool) -> None:
    """Make `run_dir` ready for a run: created if new, the temporary files a killed
    run left removed; when resuming from `resumed_step`, metrics.jsonl cut back to
    it; for a new run, refused if it holds one, unless `overwrite` (its files are
    deleted then)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CharLMError(f"--out {str(run_dir)!r} is a file, not a folder: give a folder (a new one, "
                          "or one holding a run to --resume)")
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_partial_writes(run_dir)
        if resumed_step is not None:
            log = MetricsLog(run_dir / "metrics.jsonl")
            log.keep_until(resumed_step)
            if log.damaged_lines:
                print(f"fusedlstm: left out {log.damaged_lines} damaged line(s) of {log.path}",
                      file=sys.stderr)
            return
        existing = [n for n in RUN_FILES[:3] if (run_dir / n).exists()]
        if existing and not overwrite:
            checkpointed = any(n in existing for n in (ckpt.BEST, ckpt.LAST))
            what = "a run" if checkpointed else "a run that stopped before its first checkpoint"
            again = "continue it" if checkpointed else "start it over"
            raise CharLMError(f"{str(run_dir)!r} already holds {what} ({', '.join(existing)}): pass "
                              f"--resume to {again}, --overwrite to replace it, or another --out")
        if overwrite:
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)


# --- the loop --------------------------------------------------------------------------------

class _Trainer:
    def __init__(self, config: TrainConfig, checkpoint: dict | None, group: distributed.Group,
                 device: torch.device, progress: bool, overwrite: bool = False) -> None:
        self.group, self.device = group, device
        text, corpus_name = load_corpus(config.text)
        if checkpoint is None:
            config = dataclasses.replace(config, text=None if config.text is None else corpus_name)
            self.vocab = Vocabulary.of(text)
        else:
            self.vocab = Vocabulary(checkpoint["vocab"])
            if fingerprint(text) != checkpoint["corpus"]["sha256"]:
                raise CharLMError(f"the corpus {corpus_name!r} changed since the run started "
                                  f"(its SHA-256 differs from the checkpoint's): resume with the same text")
        self.config = config
        self.corpus = {"name": corpus_name, "sha256": fingerprint(text), "chars": len(text)}
        self.bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
        if self.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise CharLMError("this GPU has no bfloat16 support: pass --precision fp32")

        data = split(self.vocab.encode(text), config.val_fraction)
        self.prime_pool = text[data.n_train:data.n_train + PRIME_POOL_CHARS]
        self.streams = TrainStreams(data, config.batch_size, config.seq_len, group.rank, group.world).to(device)
        self.evals = EvalStreams(data, config.eval_streams, config.seq_len, group.rank, group.world).to(device)

        # Every process builds the same initial weights (DDP would broadcast rank 0's
        # anyway); then each draws its own dropout masks.
        seed_everything(config.seed)
        self.model = CharLM(len(self.vocab), config.embed_dim, config.hidden_sizes, config.dropout,
                            config.lstm_impl, config.backend, config.weight_dropout,
                            config.variational_dropout).to(device)
        if group.rank:
            seed_everything(config.seed + group.rank)
        self.net = (DistributedDataParallel(self.model, device_ids=[device] if device.type == "cuda" else None)
                    if group.active else self.model)
        self.optimizer = make_optimizer(self.model, config, device)
        self.state = zero_state(self.model, self.streams.streams.size(0), device)
        self.progress = {
            "step": 0, "elapsed_s": 0.0, "best_val_loss": None, "best_step": None,
            "planned_steps": None, "loss_sum": 0.0, "loss_count": 0, "session": 0,
        }
        self.saved_step = None  # step of the run folder's last.pt
        if checkpoint is not None:
            self._restore(checkpoint)
            self.saved_step = checkpoint["step"]
        self.show_progress = progress and group.is_main
        self._bar = None
        self.run_dir = self._prepare_run_dir(checkpoint is not None, overwrite)
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")

    # -- checkpoints ------------------------------------------------------------------------

    def _restore(self, checkpoint: dict) -> None:
        file = ckpt.resolve(self.config.out, ckpt.LAST)  # the file resume() loaded
        with ckpt.reading(file, "weights"):
            self.model.load_state_dict(checkpoint["model"])
        with ckpt.reading(file, "optimizer state"):
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        with ckpt.reading(file, "progress counters"):
            self.progress.update(checkpoint["progress"])
        # The carried state of all streams, [L, B, H] per layer group; take this process's slice.
        local = self.config.batch_size // self.group.world
        rows = slice(self.group.rank * local, (self.group.rank + 1) * local)
        with ckpt.reading(file, "carried stream state"):
            self.state = [(h[:, rows].to(self.device), c[:, rows].to(self.device))
                          for h, c in checkpoint["train_state"]]
            expected = zero_state(self.model, local, self.device)
            if [(h.shape, c.shape) for h, c in self.state] != [(h.shape, c.shape) for h, c in expected]:
                raise ValueError("its shapes do not match the model and batch size")
        rngs = checkpoint["rng"]
        if len(rngs) == self.group.world:
            with ckpt.reading(file, "random number generator states"):
                set_rng_state(rngs[self.group.rank], self.device)
        elif self.group.is_main:
            print(f"fusedlstm: the checkpoint was written by {len(rngs)} process(es), this run has "
                  f"{self.group.world}: dropout draws differ from an uninterrupted run", file=sys.stderr)

    def _checkpoint(self) -> dict | None:
        """The run's checkpoint on rank 0 (None elsewhere); every process must call it."""
        state = [(self.group.cat(h, 1).cpu(), self.group.cat(c, 1).cpu()) for h, c in self.state]
        rngs = self.group.gather_objects(rng_state(self.device))
        if not self.group.is_main:
            return None
        return {
            "format": ckpt.FORMAT,
            "config": self.config.to_dict(),
            "vocab": self.vocab.chars,
            "corpus": self.corpus,
            "prime_pool": self.prime_pool,
            "step": self.progress["step"],
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "train_state": state,
            "rng": rngs,
            "progress": dict(self.progress),
            "torch_version": str(torch.__version__),
        }

    def _save(self, best: bool) -> None:
        checkpoint = self._checkpoint()
        if checkpoint is None:
            return
        # last.pt first: a kill between the two writes leaves best.pt no newer than last.pt.
        ckpt.save_atomic(checkpoint, self.run_dir / ckpt.LAST)
        self.saved_step = checkpoint["step"]
        if best:
            ckpt.save_atomic(checkpoint, self.run_dir / ckpt.BEST)

    def _prepare_run_dir(self, resuming: bool, overwrite: bool) -> Path:
        if self.config.out is not None:
            run_dir = Path(self.config.out)
        else:
            run_dir = Path(self.group.from_main(
                datetime.now().strftime("runs/charlm-%Y%m%d-%H%M%S")))
        if self.group.is_main:
            prepare_run_dir(run_dir, self.progress["step"] if resuming else None, overwrite)
            with writing(run_dir):
                (run_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        return run_dir

    # -- evaluation -------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss, nats per character, over all held-out characters."""
        self.model.eval()
        ev = self.evals
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # [nll sum, characters]
        if ev.inputs.size(0):
            state, chunk = None, 4 * self.config.seq_len
            for start in range(0, ev.inputs.size(1), chunk):
                x, y = ev.inputs[:, start:start + chunk], ev.targets[:, start:start + chunk]
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    logits, state = self.model(x, state)
                nll = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")  # [rows, chunk]
                totals[0] += nll[:, ev.scored[start:start + chunk]].sum(dtype=torch.float64)
            totals[1] = ev.chars
        self.group.sum_(totals)
        self.model.train()
        return (totals[0] / totals[1]).item()

    # -- training ---------------------------------------------------------------------------

    def _horizon(self) -> int | None:
        return self.config.max_steps if self.config.max_steps is not None else self.progress["planned_steps"]

    def _budget_spent(self, step: int, elapsed: float | None = None) -> str | None:
        """Why the run must stop before taking step `step` (0-based), or None; `elapsed`
        (seconds) is checked when given."""
        if self.config.max_steps is not None and step >= self.config.max_steps:
            return "max_steps"
        planned = self.progress["planned_steps"]
        if self.config.minutes is not None and (planned is not None and step >= planned or
                                                elapsed is not None and elapsed >= 60 * self.config.minutes):
            return "time"
        return None

    def _train_step(self, step: int, votes: list[bool]) -> tuple[float, list[bool]]:
        """One optimiser step -> (mean loss over all processes, for each of `votes`
        whether any process voted yes)."""
        x, y, restart = self.streams.batch(step)
        if restart:
            self.state = zero_state(self.model, x.size(0), self.device)
        lr = learning_rate(self.config, step, self._horizon())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits, state = self.net(x, self.state)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        # One synchronisation per step: loss, gradient norm (the same on every process:
        # DDP averaged the gradients) and votes, summed over processes.
        shared = torch.tensor([0.0, 0.0, *map(float, votes)], device=self.device)
        shared[0], shared[1] = loss.detach().float(), norm.float()
        loss_sum, norm_sum, *vote_sums = self.group.sum_(shared).tolist()
        loss_value, norm_value = loss_sum / self.group.world, norm_sum / self.group.world
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            kept = (f"the last good checkpoint, {self.run_dir / ckpt.LAST} (step {self.saved_step}), "
                    "is kept" if self.saved_step is not None else "no checkpoint had been written yet")
            raise TrainingDiverged(
                f"training diverged at step {step + 1}: loss {loss_value}, gradient norm {norm_value} "
                f"(lr {lr:.3g}); stopped without saving this step: {kept}. Try a lower --lr"
                + (" or --precision fp32" if self.bf16 else ""))
        self.optimizer.step()
        self.state = detach_state(state)
        return loss_value, [v > 0 for v in vote_sums]

    def run(self) -> TrainResult:
        config, p, group = self.config, self.progress, self.group
        chars_per_step = config.batch_size * config.seq_len
        if self._budget_spent(p["step"], p["elapsed_s"]) is not None:
            return self._result("already done")
        p["session"] += 1
        self._note(self._summary())
        bar = self._progress_bar()
        start = time.perf_counter()
        elapsed0 = p["elapsed_s"]
        plan_mark = (p["step"], start)  # (step, clock) the next horizon plan measures speed from
        interval_time, interval_chars = 0.0, 0
        last_plot, val = time.perf_counter(), None
        try:
            with StopRequest() as stop:
                while True:
                    step_start = time.perf_counter()
                    # Time is rank 0's clock, so that every process stops at the same step.
                    time_up = (group.is_main and config.minutes is not None
                               and elapsed0 + step_start - start >= 60 * config.minutes)
                    loss, (stop_now, time_up) = self._train_step(p["step"], [stop.requested, time_up])
                    p["step"] += 1
                    p["loss_sum"] += loss
                    p["loss_count"] += 1
                    interval_time += time.perf_counter() - step_start
                    interval_chars += chars_per_step
                    p["elapsed_s"] = elapsed0 + time.perf_counter() - start
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.3f}", val="-" if val is None else f"{val:.3f}",
                                        chars_s=f"{interval_chars / interval_time:.0f}", refresh=False)
                    why = "time" if time_up else self._budget_spent(p["step"])
                    saved = False
                    if p["step"] % config.eval_interval == 0 or why is not None:
                        if config.max_steps is None:  # before saving, so the checkpoint holds the plan
                            now = time.perf_counter()
                            self._plan(plan_mark, elapsed0 + now - start)
                            plan_mark = (p["step"], now)
                            why = why or self._budget_spent(p["step"])
                        val = self._evaluate_and_save(interval_time, interval_chars)
                        interval_time, interval_chars, saved = 0.0, 0, True
                        if group.is_main and time.perf_counter() - last_plot > PLOT_EVERY_S:
                            self._plot()
                            last_plot = time.perf_counter()
                    if stop_now:
                        self._note(f"stopped at step {p['step']} on request; saved {self.run_dir / ckpt.LAST}")
                        if not saved:
                            self._save(best=False)
                        return self._result("interrupted")
                    if why is not None:
                        return self._result(why)
        finally:
            if bar is not None:
                bar.close()
            if group.is_main and self.log.path.exists():
                self._plot()

    def _plan(self, mark: tuple[int, float], elapsed: float) -> None:
        """Set a time-budgeted run's horizon (its number of steps) so that the cosine ends
        at the budget, from the speed since `mark` (step, clock: the previous plan, made
        just before an evaluation, so the interval includes one; or the session's start).
        Re-planned at every evaluation:
        the first steps of a process run slower (on tiny-shakespeare, 40k chars/s over the
        first 200 steps against 72-74k after), and a horizon fixed from them ended a
        10-minute run after 392 s. Decided by rank 0 and saved with the run, so the
        schedule is a function of the step and the saved horizon."""
        p = self.progress
        step0, clock0 = mark
        per_step = (time.perf_counter() - clock0) / max(1, p["step"] - step0)
        left = 60 * self.config.minutes - elapsed
        p["planned_steps"] = self.group.from_main(p["step"] + max(0, int(left / per_step)))
        if self.show_progress and self._bar is not None:
            self._bar.total = p["planned_steps"]
            self._bar.refresh()

    def _evaluate_and_save(self, interval_time: float, interval_chars: int) -> float:
        p = self.progress
        val = self.evaluate()
        record = {
            "step": p["step"],
            "train_loss": p["loss_sum"] / p["loss_count"] if p["loss_count"] else None,
            "val_loss": val,
            "val_bpc": bits(val),
            "chars_per_sec": interval_chars / interval_time if interval_time else None,
            "elapsed_s": p["elapsed_s"],
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        p["loss_sum"], p["loss_count"] = 0.0, 0
        best = p["best_val_loss"] is None or val < p["best_val_loss"]
        if best:
            p["best_val_loss"], p["best_step"] = val, p["step"]
        if self.group.is_main:
            self.log.append(record)  # before the checkpoint: a resume drops lines after it
            train = "-" if record["train_loss"] is None else f"{record['train_loss']:.4f}"
            self._note(f"step {p['step']}: train {train}, val {val:.4f} nats/char "
                       f"({bits(val):.3f} bpc), {record['chars_per_sec'] or 0:,.0f} chars/s, "
                       f"{p['elapsed_s']:.0f} s")
        self._save(best)
        return val

    # -- output -----------------------------------------------------------------------------

    def _progress_bar(self):
        """A tqdm bar on a terminal (none in logs, which get the evaluation lines only)."""
        if self.show_progress:
            from tqdm import tqdm

            self._bar = tqdm(total=self._horizon(), initial=self.progress["step"], unit="step",
                             dynamic_ncols=True, file=sys.stderr, disable=None)
        return self._bar

    def _summary(self) -> str:
        """One line: the model and its regularisers, the corpus, the budget."""
        c = self.config
        params = sum(p.numel() for p in self.model.parameters())
        budget = " and ".join(([f"{c.max_steps} steps"] if c.max_steps is not None else [])
                              + ([f"{c.minutes:g} min"] if c.minutes is not None else []))
        return (f"model: LSTM {'x'.join(map(str, c.hidden_sizes))} ({c.lstm_impl}), {params:,} parameters, "
                f"dropout {c.dropout:g}, weight dropout {c.weight_dropout:g}, variational dropout "
                f"{c.variational_dropout:g}, weight decay {c.weight_decay:g}, lr {c.lr:g}; corpus "
                f"{self.corpus['chars']:,} characters; budget {budget}")

    def _note(self, message: str) -> None:
        if self.show_progress:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    def _plot(self) -> None:
        name = self.corpus["name"]
        plot(self.log.read(), self.run_dir / "loss.png",
             title=f"{Path(name).name if self.config.text else name}, hidden "
                   f"{'x'.join(map(str, self.config.hidden_sizes))}, {self.config.lstm_impl}")

    def _result(self, stopped: str) -> TrainResult:
        p = self.progress
        return TrainResult(self.run_dir, p["step"], p["best_val_loss"], p["best_step"], stopped, self.model,
                           self.group.is_main)
