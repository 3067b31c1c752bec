"""The `ftkit` command: one function per subcommand, no logic beyond arguments and messages.

Any `FtkitError` (bad recipe, bad data, missing model, a run that exists) becomes one line on
stderr and exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ftkit import __version__
from ftkit.errors import FtkitError

EXIT_USAGE = 2

OVERRIDES_HELP = "dotted overrides applied to the recipe, e.g. train.max_steps=20 adapter.r=8 model.quantization=8bit"

MAIN_EPILOG = """\
a recipe is one YAML file: model (source, quantization), adapter (LoRA), task (sentiment, ...),
data (files, columns, max_length), train, eval and output. See recipes/ for examples.

typical session:
  ftkit validate recipes/sentiment-smollm2-qlora.yaml        check a recipe (no model loaded)
  ftkit data     recipes/sentiment-smollm2-qlora.yaml        inspect data: lengths, masking, overlap, memory
  ftkit train    recipes/sentiment-smollm2-qlora.yaml        train, then evaluate base vs adapter
  ftkit train    recipes/sentiment-smollm2-qlora.yaml train.max_steps=20 --overwrite
  ftkit eval     recipes/sentiment-smollm2-qlora.yaml --adapter runs/sentiment-smollm2-qlora/adapter

environment: FTKIT_HOME (model cache, default ~/.cache/ftkit), HF_HUB_OFFLINE=1 to stay offline.
"""


def _recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", type=Path, help="the recipe YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftkit",
        description="Fine-tune a causal LM with LoRA/QLoRA from one YAML recipe, "
        "and prove on a held-out split that the adapter beats the base model.",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ftkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser(
        "validate",
        help="check a recipe without loading a model",
        description="Validate a recipe: every key, type, range and file path, all problems at once. "
        "Loads no model and no data; prints the resolved recipe with --print.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _recipe_args(validate)
    validate.add_argument("--print", action="store_true", help="print the fully resolved recipe (YAML)")
    validate.set_defaults(run=cmd_validate)

    train = commands.add_parser(
        "train",
        help="fine-tune an adapter, then evaluate base vs adapter on the held-out split",
        description="Train a LoRA adapter as the recipe says, then evaluate the base model and the adapter on "
        "the held-out split (eval.split). Writes runs/<name>/: adapter/, recipe.yaml, train_log.jsonl, "
        "checkpoints/, metrics.json, predictions.jsonl, report.md.",
        epilog="examples:\n"
        "  ftkit train recipes/sentiment-smollm2-qlora.yaml\n"
        "  ftkit train recipes/sentiment-smollm2-qlora.yaml train.max_steps=20 adapter.r=8 --overwrite\n"
        "  ftkit train recipes/sentiment-smollm2-qlora.yaml --resume      (after an interruption)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _recipe_args(train)
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    mode.add_argument("--resume", action="store_true", help="continue from the run's last complete checkpoint")
    train.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation after training")
    train.set_defaults(run=cmd_train)

    data = commands.add_parser(
        "data",
        help="inspect the data before training: splits, lengths, truncation, masking, overlap, memory",
        description="Pre-flight check of a recipe's data, without loading model weights: rows per split (and skipped "
        "bad rows), label balance, token-length percentiles, truncation, trained tokens and EOS, exact and near "
        "duplicates between train and held-out splits, a peak-memory estimate, and two examples with the "
        "loss-carrying part marked «like this». Exit code 2 when `ftkit train` would refuse to start.",
        epilog="examples:\n"
        "  ftkit data recipes/sentiment-smollm2-qlora.yaml\n"
        "  ftkit data recipes/sentiment-smollm2-qlora.yaml data.train=../../shared/datasets/banking77/train.csv "
        "data.test=null 'data.split={test: 0.1}' 'data.columns={label: category}' task.labels=null",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _recipe_args(data)
    data.set_defaults(run=cmd_data)

    evaluate = commands.add_parser(
        "eval",
        help="evaluate the base model and adapters on a held-out split",
        description="Evaluate the recipe's base model and each --adapter on the same examples (the recipe's "
        "eval.split, or --data FILE read with the recipe's column mapping). Reports each metric with a 95% "
        "bootstrap confidence interval and a paired significance test against the base model.",
        epilog="examples:\n"
        "  ftkit eval recipes/sentiment-smollm2-qlora.yaml --adapter runs/sentiment-smollm2-qlora/adapter\n"
        "  ftkit eval recipes/sentiment-smollm2-qlora.yaml --adapter A/adapter --adapter B/adapter --split validation\n"
        "  ftkit eval recipes/sentiment-smollm2-qlora.yaml --adapter runs/x/adapter --data other.csv "
        "data.columns.text=sentence",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _recipe_args(evaluate)
    evaluate.add_argument("--adapter", type=Path, action="append", default=[], metavar="DIR", help="adapter folder (repeatable)")
    evaluate.add_argument("--split", choices=["test", "validation"], help="held-out split (default: eval.split)")
    evaluate.add_argument("--data", type=Path, help="evaluate on this file instead of a recipe split")
    evaluate.add_argument("--out", type=Path, help="where to write reports (default: <run dir>/eval)")
    evaluate.set_defaults(run=cmd_eval)

    compare = commands.add_parser(
        "compare",
        help="compare finished runs side by side (metrics with CIs, significance, training cost)",
        description="Compare runs in one table: for each run directory, its settings (quantization, LoRA r, and "
        "alpha, learning rate and training length where the runs differ), the held-out primary metric of the "
        "base model and the adapter with 95% confidence intervals, the adapter - base difference with its "
        "p-value, and training wall time and peak memory. Reads each run's metrics.json (or eval/metrics.json) "
        "and recipe.yaml; loads no model. Other metrics are listed below the table; runs evaluated on different "
        "tasks or splits get a warning that their numbers are not comparable.",
        epilog="examples:\n"
        "  ftkit train recipes/sentiment-smollm2-qlora.yaml adapter.r=8 output.dir=runs/r8\n"
        "  ftkit train recipes/sentiment-smollm2-qlora.yaml adapter.r=16 output.dir=runs/r16\n"
        "  ftkit compare runs/r8 runs/r16                                   (does rank 16 beat rank 8?)\n"
        "  ftkit train recipes/sentiment-smollm2-qlora.yaml model.quantization=8bit output.dir=runs/8bit\n"
        "  ftkit compare runs/sentiment-smollm2-qlora runs/8bit             (4-bit QLoRA vs 8-bit base weights)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="a run directory (runs/<name>) written by ftkit train"
    )
    compare.set_defaults(run=cmd_compare)
    return parser


def cmd_validate(args: argparse.Namespace) -> int:
    from ftkit.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.print:
        print(recipe.to_yaml(), end="")
    print(f"{args.recipe}: ok (task {recipe.task.name}, model {recipe.model.source}, {recipe.model.quantization}, "
          f"run dir {recipe.run_dir})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ftkit.workflow import train_and_evaluate

    return train_and_evaluate(args.recipe, args.overrides, overwrite=args.overwrite, resume=args.resume, evaluate=not args.no_eval)


def cmd_data(args: argparse.Namespace) -> int:
    from ftkit.workflow import inspect_data

    return inspect_data(args.recipe, args.overrides)


def cmd_eval(args: argparse.Namespace) -> int:
    from ftkit.workflow import evaluate_adapters

    return evaluate_adapters(args.recipe, args.overrides, adapters=args.adapter, split=args.split, data=args.data, out=args.out)


def cmd_compare(args: argparse.Namespace) -> int:
    from ftkit.compare import compare_runs

    print(compare_runs(args.run_dirs))
    return 0


def _quiet_libraries() -> None:
    """Keep the terminal for ftkit's own progress and results; --debug restores library logs."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # bitsandbytes logs a warning on import on CPUs with AVX512-BF16 when the optional `kernels`
    # package is missing; it is noise to a user (and would precede every `ftkit: error:` line).
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may follow options (`train r.yaml --resume train.max_steps=9`); argparse alone
    # would reject KEY=VALUE words that come after an option.
    args, extra = parser.parse_known_args(argv)
    strays = [word for word in extra if word.startswith("-") or "=" not in word or not hasattr(args, "overrides")]
    if strays:
        parser.error(f"unrecognized arguments: {' '.join(strays)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        if not args.debug and args.command != "validate":
            _quiet_libraries()
        return run(args)
    except FtkitError as error:
        if args.debug:
            raise
        lines = str(error).splitlines() or [type(error).__name__]
        for line in lines:
            print(f"ftkit: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        if error.errno != errno.ENOSPC or args.debug:
            raise
        print(f"ftkit: error: the disk is full ({error.filename or 'while writing'}); completed checkpoints and "
              "earlier files are intact: free space, then continue with --resume", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ftkit: interrupted; completed checkpoints are kept (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
