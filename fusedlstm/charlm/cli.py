"""`fusedlstm train` and `fusedlstm sample`: argument parsing only; the work is in
train.py and sample.py."""

from __future__ import annotations

import argparse
import os
import sys

from .errors import CharLMError


def add_commands(commands) -> None:
    """Add the train and sample subcommands to the `fusedlstm` parser's subparsers."""
    from .config import PRECISIONS, PRESETS
    from .model import LSTM_IMPLS

    train = commands.add_parser(
        "train", help="train the char-level language model on a text file",
        description="Train a character-level LSTM language model. Without --text it trains on "
                    "Python's bundled documentation (pydoc_data.topics). Options left out come "
                    "from the preset; a budget given here (--max-steps, --minutes) replaces the "
                    "preset's.")
    train.add_argument("--text", metavar="PATH", help="UTF-8 text file (default: pydoc_data.topics)")
    train.add_argument("--out", metavar="DIR", help="run folder (default: runs/charlm-<time>)")
    train.add_argument("--preset", default="default", choices=sorted(PRESETS),
                       help="default: sized to the text and the budget; small: 2x128, dropout 0.1; "
                            "seed: the blog's 1000+800 units (default: default)")
    train.add_argument("--hidden", type=_sizes, metavar="N[,N...]",
                       help="hidden size of every layer, or one per layer (e.g. 1000,800)")
    train.add_argument("--layers", type=int, metavar="N", help="number of LSTM layers")
    train.add_argument("--embed", dest="embed_dim", type=int, metavar="N", help="embedding size")
    train.add_argument("--dropout", type=float, metavar="P", help="dropout after every LSTM layer")
    train.add_argument("--weight-dropout", type=float, metavar="P",
                       help="DropConnect on every W_hh, a fresh mask per window (FusedLSTM only)")
    train.add_argument("--variational-dropout", type=float, metavar="P",
                       help="dropout on every LSTM layer's input, one mask per sequence (FusedLSTM only)")
    train.add_argument("--weight-decay", type=float, metavar="X", help="decoupled weight decay (AdamW) on weight matrices")
    train.add_argument("--seq-len", type=int, metavar="N", help="characters per window (truncated BPTT length)")
    train.add_argument("--batch-size", type=int, metavar="N", help="streams per step (global, over all processes)")
    train.add_argument("--lr", type=float, metavar="X", help="peak Adam learning rate")
    train.add_argument("--max-steps", type=int, metavar="N", help="stop after N steps")
    train.add_argument("--minutes", type=float, metavar="M", help="stop after M minutes")
    train.add_argument("--eval-interval", type=int, metavar="N", help="steps between evaluations and checkpoints")
    train.add_argument("--val-fraction", type=float, metavar="F", help="held-out end of the text (default 0.05)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: cuda when available")
    train.add_argument("--backend", type=_backend, metavar="NAME",
                       help="FusedLSTM backend (auto, cpu, cuda, triton, reference)")
    train.add_argument("--lstm-impl", choices=LSTM_IMPLS,
                       help="fused: FusedLSTM (default); nn: torch.nn.LSTM, for comparison")
    train.add_argument("--precision", choices=PRECISIONS, help="auto (default): bf16 on CUDA, fp32 on CPU")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    train.add_argument("--overwrite", action="store_true",
                       help="delete the run already in --out (its checkpoints, metrics and plot) and start anew")
    train.add_argument("--seed", type=int, metavar="S", help="random seed (default 0)")
    train.set_defaults(run=run_train)

    sample = commands.add_parser(
        "sample", help="generate text from a trained model",
        description="Print the priming text and the characters the model generates after it.")
    sample.add_argument("--checkpoint", required=True, metavar="RUN_DIR_OR_FILE",
                        help="a run folder (its best.pt) or a checkpoint file")
    sample.add_argument("--prime", metavar="TEXT", help="priming text (default: a random slice of the "
                                                       "held-out text)")
    sample.add_argument("--temperature", type=float, default=1.0, metavar="T",
                        help="> 0 divides the logits; 0 is greedy (argmax) (default 1.0)")
    sample.add_argument("--top-k", type=int, metavar="K", help="draw only from the K most likely characters")
    sample.add_argument("--length", type=int, default=1000, metavar="N", help="characters to generate (default 1000)")
    sample.add_argument("--seed", type=int, metavar="S", help="seed for reproducible text")
    sample.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="default: cuda when available")
    sample.add_argument("--backend", type=_backend, default="auto", metavar="NAME", help="FusedLSTMCell backend")
    sample.set_defaults(run=run_sample)


def _sizes(value: str) -> list[int]:
    try:
        sizes = [int(part) for part in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N,N,... (integers), got {value!r}") from None
    if any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"hidden sizes must be positive, got {value!r}")
    return sizes


def _backend(value: str) -> str:
    from .. import backends

    try:
        return backends.check_name(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run_train(args: argparse.Namespace) -> int:
    from . import train
    from .config import layer_sizes, make_config
    from .metrics import bits

    try:
        overrides = dict(
            text=args.text, out=args.out, hidden_sizes=layer_sizes(args.preset, args.hidden, args.layers),
            embed_dim=args.embed_dim, dropout=args.dropout, weight_dropout=args.weight_dropout,
            variational_dropout=args.variational_dropout, weight_decay=args.weight_decay, seq_len=args.seq_len,
            batch_size=args.batch_size, lr=args.lr, max_steps=args.max_steps, minutes=args.minutes,
            eval_interval=args.eval_interval, val_fraction=args.val_fraction, device=args.device,
            backend=args.backend, lstm_impl=args.lstm_impl, precision=args.precision, seed=args.seed)
        if args.resume:
            if args.out is None:
                raise CharLMError("--resume needs --out RUN_DIR: the run folder to continue")
            if args.overwrite:
                raise CharLMError("--resume continues the run in --out and --overwrite deletes it: "
                                  "give one of them")
            result = train.resume(args.out, **overrides)
        else:
            result = train.train(make_config(args.preset, **overrides), overwrite=args.overwrite)
    except CharLMError as error:
        print(f"fusedlstm train: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the disk, not the program: one line naming the file
        print(f"fusedlstm train: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C while stopping: the files on disk stay whole
        print("fusedlstm train: aborted; last.pt holds the last saved step", file=sys.stderr)
        return 130
    if not result.main_process:
        return 0
    if result.best_val_loss is None:
        print(f"no evaluation yet after {result.step} steps; run folder {result.run_dir}")
    else:
        print(f"best validation loss {result.best_val_loss:.4f} nats/char "
              f"({bits(result.best_val_loss):.3f} bpc) at step {result.best_step} of {result.step} "
              f"({result.stopped}); run folder {result.run_dir}")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    try:
        from .distributed import resolve_device
        from .sample import sample

        prime, stream = sample(args.checkpoint, args.prime, args.length, args.temperature, args.top_k,
                               args.seed, str(resolve_device(args.device)), args.backend)
        sys.stdout.write(prime)
        for ch in stream:
            sys.stdout.write(ch)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (CharLMError, OSError) as error:
        print(f"fusedlstm sample: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: keep what was printed, end its line
        sys.stdout.write("\n")
        sys.stdout.flush()
        return 130
    return 0
