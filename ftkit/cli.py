"""The `ftkit` command: no logic beyond arguments and messages.

Each subcommand is a help page, `<COMMAND>_PAGE` (summary, description, examples), and a pair of
functions: `add_<command>` declares its arguments, `cmd_<command>` hands them to the module that
does the work; `COMMANDS` lists them in the order `--help` shows.

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
from typing import Any, TypeAlias

from ftkit import __version__
from ftkit.errors import FtkitError

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
EXIT_USAGE = 2
DTYPE_CHOICES = ("bf16", "fp16", "fp32")  # ftkit.export.merge.DTYPES, without importing torch for --help

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
  ftkit chat     runs/sentiment-smollm2-qlora                talk to the adapter in the terminal
  ftkit serve    runs/sentiment-smollm2-qlora runs/qa-smollm2-qlora   OpenAI-compatible API on 127.0.0.1:8000

environment: FTKIT_HOME (model cache, default ~/.cache/ftkit), HF_HUB_OFFLINE=1 to stay offline.
"""


def _subcommand(commands: Commands, run: Callable[[argparse.Namespace], int], page: str) -> argparse.ArgumentParser:
    """The parser of the subcommand that `run` (`cmd_<command>`) carries out, with the texts of its help page.

    A page (`<COMMAND>_PAGE`) is the `ftkit --help` summary line, a blank line, the description and,
    optionally, a blank line and `examples:` followed by the examples, shown as written. Each
    paragraph of the description is shown as one line (argparse does not re-wrap descriptions);
    indented lines (a table) stay lines of their own. A page is Python text: a line that ends in a
    backslash continues on the next one (the help shows one line), and `\\\\` shows a backslash.
    """
    summary, _, rest = page.strip("\n").partition("\n\n")
    description, _, examples = rest.partition("\n\nexamples:\n")
    parser = commands.add_parser(
        run.__name__.removeprefix("cmd_"),
        help=summary,
        description=_unwrap(description),
        epilog=f"examples:\n{examples}" if examples else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def _unwrap(text: str) -> str:
    """Each paragraph's lines joined into one line, but for indented lines, which are kept as they are."""
    paragraphs = []
    for paragraph in text.split("\n\n"):
        lines: list[str] = []
        for line in paragraph.split("\n"):
            if lines and not line.startswith(" ") and not lines[-1].startswith(" "):
                lines[-1] += " " + line
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _options(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The named options as keyword arguments: each option's dest is the name of the parameter it sets."""
    return {name: getattr(args, name) for name in names}


def _recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", type=Path, help="the recipe YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)


TARGET_HELP = "a run directory (runs/<name>), an adapter folder, or a model folder such as a merged export"


def _output_args(parser: argparse.ArgumentParser) -> None:
    """`--out` and `--overwrite`, for the commands that write a new folder."""
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (refused if it exists, unless --overwrite)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def _quantization_arg(parser: argparse.ArgumentParser) -> None:
    """`--quantization`, for the commands that load a trained adapter's base model again."""
    parser.add_argument(
        "--quantization", choices=["none", "4bit", "8bit"], help="load the base this way (default: as trained)"
    )


VALIDATE_PAGE = """\
check a recipe without loading a model

Validate a recipe: every key, type, range and file path, all problems at once. Loads no model and no
data; prints the resolved recipe with --print.
"""


def add_validate(commands: Commands) -> None:
    validate = _subcommand(commands, cmd_validate, VALIDATE_PAGE)
    _recipe_args(validate)
    validate.add_argument("--print", action="store_true", help="print the fully resolved recipe (YAML)")


def cmd_validate(args: argparse.Namespace) -> int:
    from ftkit.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.print:
        print(recipe.to_yaml(), end="")
    print(
        f"{args.recipe}: ok (task {recipe.task.name}, model {recipe.model.source}, {recipe.model.quantization}, "
        f"run dir {recipe.run_dir})"
    )
    return 0


TRAIN_PAGE = """\
fine-tune an adapter, then evaluate base vs adapter on the held-out split

Train a LoRA adapter as the recipe says, then evaluate the base model and the adapter on the
held-out split (eval.split). Writes runs/<name>/: adapter/, recipe.yaml, train_log.jsonl,
checkpoints/, metrics.json, predictions.jsonl, report.md.

examples:
  ftkit train recipes/sentiment-smollm2-qlora.yaml
  ftkit train recipes/sentiment-smollm2-qlora.yaml train.max_steps=20 adapter.r=8 --overwrite
  ftkit train recipes/sentiment-smollm2-qlora.yaml --resume      (after an interruption)
  ftkit train recipes/sentiment-smollm2-qlora.yaml --nproc 2 train.batch_size=4
      (2 processes, data-parallel; effective batch 4 x 2 x grad_accum, the same as 8 x 1 x grad_accum)
  accelerate launch --config_file recipes/accelerate/ddp.yaml -m ftkit.cli train recipes/x.yaml
  torchrun --nproc_per_node 2 -m ftkit.cli train recipes/x.yaml      (same as --nproc 2 on CPU)
"""


def add_train(commands: Commands) -> None:
    train = _subcommand(commands, cmd_train, TRAIN_PAGE)
    _recipe_args(train)
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    mode.add_argument("--resume", action="store_true", help="continue from the run's last complete checkpoint")
    train.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation after training")
    train.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train in N data-parallel processes, started by torchrun "
        "(CPU, gloo) or accelerate launch (CUDA GPUs, one process per GPU); only the main process writes",
    )


def cmd_train(args: argparse.Namespace) -> int:
    from ftkit.training.workflow import train_and_evaluate, train_in_processes

    if args.nproc is not None and args.nproc != 1:
        # The launcher's processes run this same command without --nproc.
        child = ["--debug"] * args.debug + ["train", str(args.recipe), *args.overrides]
        child += [
            flag
            for flag, on in (("--overwrite", args.overwrite), ("--resume", args.resume), ("--no-eval", args.no_eval))
            if on
        ]
        return train_in_processes(
            args.nproc, args.recipe, args.overrides, child, overwrite=args.overwrite, resume=args.resume
        )
    return train_and_evaluate(
        args.recipe, args.overrides, overwrite=args.overwrite, resume=args.resume, evaluate=not args.no_eval
    )


DATA_PAGE = """\
inspect the data before training: splits, lengths, truncation, masking, overlap, memory

Pre-flight check of a recipe's data, without loading model weights: rows per split (and skipped bad
rows), label balance, token-length percentiles, truncation, trained tokens and EOS, exact and near
duplicates between train and held-out splits, a peak-memory estimate, and two examples with the
loss-carrying part marked «like this». Exit code 2 when `ftkit train` would refuse to start.

examples:
  ftkit data recipes/sentiment-smollm2-qlora.yaml
  ftkit data recipes/sentiment-smollm2-qlora.yaml data.train=../../shared/datasets/banking77/train.csv data.test=null \
'data.split={test: 0.1}' 'data.columns={label: category}' task.labels=null
"""


def add_data(commands: Commands) -> None:
    data = _subcommand(commands, cmd_data, DATA_PAGE)
    _recipe_args(data)


def cmd_data(args: argparse.Namespace) -> int:
    from ftkit.data.preflight import inspect_data

    return inspect_data(args.recipe, args.overrides)


EVAL_PAGE = """\
evaluate the base model and adapters on a held-out split

Evaluate the recipe's base model and each --adapter on the same examples (the recipe's eval.split,
or --data FILE read with the recipe's column mapping). Reports each metric with a 95% bootstrap
confidence interval and a paired significance test against the base model.

examples:
  ftkit eval recipes/sentiment-smollm2-qlora.yaml --adapter runs/sentiment-smollm2-qlora/adapter
  ftkit eval recipes/sentiment-smollm2-qlora.yaml --adapter A/adapter --adapter B/adapter --split validation
  ftkit eval recipes/sentiment-smollm2-qlora.yaml --adapter runs/x/adapter --data other.csv data.columns.text=sentence
  ftkit eval recipes/sentiment-smollm2-qlora.yaml --adapter runs/x/adapter --report-to mlflow   (into x's MLflow run)
"""


def add_eval(commands: Commands) -> None:
    evaluate = _subcommand(commands, cmd_eval, EVAL_PAGE)
    _recipe_args(evaluate)
    evaluate.add_argument(
        "--adapter", type=Path, action="append", default=[], metavar="DIR", help="adapter folder (repeatable)"
    )
    evaluate.add_argument("--split", choices=["test", "validation"], help="held-out split (default: eval.split)")
    evaluate.add_argument("--data", type=Path, help="evaluate on this file instead of a recipe split")
    evaluate.add_argument("--out", type=Path, help="where to write reports (default: <run dir>/eval)")
    _report_to_arg(evaluate)


def _report_to_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--report-to",
        nargs="+",
        default=[],
        metavar="TRACKER",
        help="also log to these trackers' runs of the training run (tensorboard, mlflow, wandb; its tracking.json)",
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from ftkit.evaluation.workflow import evaluate_adapters

    return evaluate_adapters(
        args.recipe,
        args.overrides,
        adapters=args.adapter,
        split=args.split,
        data=args.data,
        out=args.out,
        report_to=args.report_to,
    )


COMPARE_PAGE = """\
compare finished runs side by side (metrics with CIs, significance, training cost)

Compare runs in one table: for each run directory, its settings (quantization, LoRA r, and alpha,
learning rate and training length where the runs differ), the held-out primary metric of the base
model and the adapter with 95% confidence intervals, the adapter - base difference with its p-value,
and training wall time and peak memory. Reads each run's metrics.json (or eval/metrics.json) and
recipe.yaml; loads no model. Other metrics are listed below the table; runs evaluated on different
tasks or splits get a warning that their numbers are not comparable.

examples:
  ftkit train recipes/sentiment-smollm2-qlora.yaml adapter.r=8 output.dir=runs/r8
  ftkit train recipes/sentiment-smollm2-qlora.yaml adapter.r=16 output.dir=runs/r16
  ftkit compare runs/r8 runs/r16                                   (does rank 16 beat rank 8?)
  ftkit train recipes/sentiment-smollm2-qlora.yaml model.quantization=8bit output.dir=runs/8bit
  ftkit compare runs/sentiment-smollm2-qlora runs/8bit             (4-bit QLoRA vs 8-bit base weights)
"""


def add_compare(commands: Commands) -> None:
    compare = _subcommand(commands, cmd_compare, COMPARE_PAGE)
    compare.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="a run directory (runs/<name>) written by ftkit train"
    )
    _report_to_arg(compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from ftkit import tracking
    from ftkit.evaluation.compare import compare_runs
    from ftkit.runs import RunDir

    for folder in args.run_dirs:
        tracking.require(RunDir(folder), args.report_to, "--report-to")
    table = compare_runs(args.run_dirs)
    print(table)
    for folder in args.run_dirs if args.report_to else []:
        with tracking.reopen(RunDir(folder), args.report_to, "--report-to") as trackers:
            trackers.log_text("compare.txt", table)
    return 0


MERGE_PAGE = """\
merge an adapter into its base model (verified), or combine adapters into one

Merge a LoRA into a full-precision copy of its base model and save a plain transformers folder
(safetensors, tokenizer with the trained chat template, generation config). Never merges into
4-/8-bit weights: an adapter trained on a quantized base is merged into dequant(quant(W)), the
weights it was trained on (--base original: into the original weights instead). The result is
verified on held-out prompts against the adapter (max |logit difference|, next-token agreement,
greedy generations) and written to merge_verification.json; a mismatch is an error and nothing is
written.

With --adapters, combines several adapters of one base into a new adapter through peft's
weighted-adapter API instead; evaluate it like any other with ftkit eval --adapter.

examples:
  ftkit merge runs/sentiment-smollm2-qlora --out exports/sentiment-merged
  ftkit merge runs/sentiment-smollm2-qlora --out exports/sentiment-fp32 --dtype fp32 --base original
  ftkit merge --adapters runs/a runs/b --weights 0.5 0.5 --method ties --out runs/ab-ties/adapter
  ftkit eval recipes/sentiment-smollm2-qlora.yaml --adapter runs/ab-ties/adapter --adapter runs/a/adapter
"""


def add_merge(commands: Commands) -> None:
    merge = _subcommand(commands, cmd_merge, MERGE_PAGE)
    merge.add_argument(
        "target", type=Path, nargs="?", metavar="RUN_DIR|ADAPTER_DIR", help="the run or adapter to merge"
    )
    _output_args(merge)
    merge.add_argument(
        "--dtype", choices=list(DTYPE_CHOICES), default="bf16", help="dtype of the saved weights (default: bf16)"
    )
    merge.add_argument(
        "--base",
        choices=["dequantized", "original"],
        default="dequantized",
        help="for adapters trained on a 4-/8-bit base: merge into dequant(quant(W)) (default, reproduces "
        "the evaluated adapter) or into the original full-precision weights",
    )
    merge.add_argument("--probes", type=int, default=8, metavar="N", help="held-out prompts to verify on (default: 8)")
    merge.add_argument(
        "--adapters", type=Path, nargs="+", metavar="DIR", help="combine these adapters (instead of merging)"
    )
    merge.add_argument("--weights", type=float, nargs="+", help="one weight per --adapters entry")
    merge.add_argument(
        "--method",
        choices=["linear", "cat", "ties", "dare_ties", "dare_linear", "svd"],
        default="linear",
        help="how --adapters are combined (peft add_weighted_adapter; linear needs equal ranks)",
    )
    merge.add_argument(
        "--density", type=float, default=0.5, help="share of weights kept by ties/dare methods (default: 0.5)"
    )


def cmd_merge(args: argparse.Namespace) -> int:
    from ftkit.export import merge

    if args.adapters:
        if args.target:
            raise FtkitError("give either RUN_DIR|ADAPTER_DIR (merge) or --adapters (combine), not both")
        out = merge.combine(
            args.adapters, args.weights or [], args.method, args.out, density=args.density, overwrite=args.overwrite
        )
        print(
            f"combined {len(args.adapters)} adapters ({args.method}) -> {out}; "
            f"evaluate it with: ftkit eval RECIPE --adapter {out}"
        )
        return 0
    if args.target is None:
        raise FtkitError("ftkit merge: give RUN_DIR|ADAPTER_DIR to merge, or --adapters A B --weights ... to combine")
    result = merge.merge(
        args.target, args.out, dtype=args.dtype, base_policy=args.base, count=args.probes, overwrite=args.overwrite
    )
    print(merge.render(result))
    return 0


EXPORT_PAGE = """\
package a trained adapter for deployment: adapter, merged safetensors, GGUF, Ollama

Export a run (or adapter folder) for deployment. Every format is verified before it is kept:
  adapter      the peft adapter + recipe.yaml + metrics.json + README model card (held-out metrics with CIs,
               how to load it with peft, which serving engines accept it); no ftkit needed to load it
  safetensors  the merged model (same as ftkit merge), checked against the adapter
  gguf         the merged model as one GGUF file (f32, f16, q8_0, q4_0; q4_k_m with llama.cpp's quantizer) for
               llama, mistral, qwen2, qwen3, gemma2, phi3, gpt2, gpt_neox; checked in llama.cpp when
               llama-cpp-python is installed (pip install 'ftkit[gguf]'; transformers otherwise): tokenizer ids,
               next-token agreement, max |logit difference|; and, for a run, its held-out metric through
               llama.cpp beside the adapter's (gguf_evaluation.json)
  ollama       the GGUF plus a Modelfile whose TEMPLATE is translated from the trained chat template and
               checked to render test conversations identically

examples:
  ftkit export runs/sentiment-smollm2-qlora --format adapter --out exports/sentiment-adapter
  ftkit export runs/sentiment-smollm2-qlora --format gguf --out exports/sentiment-gguf --dtype f16
  ftkit export runs/customer-service-smollm2-lora-8bit --format ollama --out exports/cs-ollama
  ollama create northwind -f exports/cs-ollama/Modelfile
"""


def add_export(commands: Commands) -> None:
    export = _subcommand(commands, cmd_export, EXPORT_PAGE)
    export.add_argument("target", type=Path, metavar="RUN_DIR|ADAPTER_DIR", help="the run or adapter to export")
    export.add_argument(
        "--format", required=True, choices=["adapter", "safetensors", "gguf", "ollama"], help="what to write"
    )
    _output_args(export)
    export.add_argument(
        "--dtype",
        choices=["bf16", "fp16", "fp32", "f16", "f32", "q8_0", "q4_0", "q4_k_m"],
        help="weights dtype: bf16|fp16|fp32 for safetensors (default bf16); f16|f32|q8_0|q4_0|q4_k_m for "
        "gguf/ollama (default f16)",
    )


def cmd_export(args: argparse.Namespace) -> int:
    from ftkit.export.formats import export

    print(export(args.target, args.format, args.out, dtype=args.dtype, overwrite=args.overwrite))
    return 0


CHAT_PAGE = """\
talk to an adapter (or a model folder) in the terminal

An interactive chat with a fine-tuned adapter on its base model, or with a model folder: the
conversation is rendered with the tokenizer's chat template every turn, the answer streams as it is
generated, and tokens/s are printed after it. A chat template other than the one the adapter was
trained with is reported on stderr. Commands: /system TEXT (set the system prompt), /reset (forget
the conversation), /exit or Ctrl-D (quit); Ctrl-C stops an answer.

examples:
  ftkit chat runs/customer-service-smollm2-lora-8bit
  ftkit chat runs/customer-service-smollm2-lora-8bit --system 'You answer in one sentence.' --temperature 0.7
  ftkit chat runs/customer-service-smollm2-lora-8bit/adapter --quantization none     (full-precision base)
  ftkit chat exports/cs-merged                                         (a merged model folder)
"""


def add_chat(commands: Commands) -> None:
    chat = _subcommand(commands, cmd_chat, CHAT_PAGE)
    chat.add_argument("target", type=Path, metavar="TARGET", help=TARGET_HELP)
    chat.add_argument("--system", metavar="TEXT", help="system prompt (default: the chat template's own, if any)")
    chat.add_argument(
        "--max-new-tokens", type=int, default=256, metavar="N", help="longest answer, in tokens (default 256)"
    )
    chat.add_argument(
        "--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default); e.g. 0.7 samples"
    )
    _quantization_arg(chat)


def cmd_chat(args: argparse.Namespace) -> int:
    from ftkit.serving.chat import run_chat

    return run_chat(args.target, **_options(args, "system", "max_new_tokens", "temperature", "quantization"))


SERVE_PAGE = """\
serve the base model and adapters over an OpenAI-compatible HTTP API

Serve one base model and any number of adapters trained on it through an OpenAI-compatible API: POST
/v1/chat/completions (streamed with "stream": true, or not), GET /v1/models, GET /health. A
request's "model" picks the system: "base" (adapters off) or an adapter by its run's name. Concurrent
requests are decoded together (continuous batching, up to 16 at a time, adapters mixed in one
batch). Bodies over 1 MB get 413, other bad requests 400/404 with an
OpenAI-style error; when the environment variable named by --api-key-env is set, requests need
'Authorization: Bearer <key>' (401 otherwise).

examples:
  ftkit serve runs/customer-service-smollm2-lora-8bit runs/qa-smollm2-qlora --port 8000
  FTKIT_API_KEY=s3cret ftkit serve runs/customer-service-smollm2-lora-8bit --host 0.0.0.0

  curl http://127.0.0.1:8000/v1/models
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"model": "customer-service-smollm2-lora-8bit", "messages": [{"role": "user", "content": "Hi"}], \
"max_tokens": 64}'

  from openai import OpenAI      # pip install openai
  client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="s3cret")   (any text when no key is set)
  reply = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "Hi"}])
  print(reply.choices[0].message.content)
"""


def add_serve(commands: Commands) -> None:
    serve = _subcommand(commands, cmd_serve, SERVE_PAGE)
    serve.add_argument("targets", type=Path, nargs="+", metavar="TARGET", help=TARGET_HELP + "; all on one base model")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)"
    )
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    serve.add_argument(
        "--api-key-env",
        default="FTKIT_API_KEY",
        metavar="VAR",
        help="environment variable holding the API key (default FTKIT_API_KEY; unset = no key)",
    )
    serve.add_argument(
        "--max-new-tokens-limit",
        type=int,
        default=512,
        metavar="N",
        help="largest max_tokens a request may ask for, and the default (default 512)",
    )
    _quantization_arg(serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ftkit.serving.server import serve

    return serve(args.targets, **_options(args, "host", "port", "api_key_env", "max_new_tokens_limit", "quantization"))


UI_PAGE = """\
a local web dashboard: runs, live training curves, evaluation evidence, examples, compare, chat

Serve a web app over the run directories below --runs (at any depth: a sweep's trials are found too).
Runs: every run with its state (running, finished, interrupted, failed), task, base model, quantization,
steps and primary metric base -> adapter with 95% CIs and a significance mark; sortable and filterable.
A run: training curves that update while it trains, the evaluation table with CIs and p-values, the
plots, the resolved recipe, the pre-flight report and the lineage. Examples: the per-example
predictions, filtered by fixed / broken / both right / both wrong and searchable. Compare: the ftkit
compare table and a bar chart with CIs. Chat: the base and the adapter side by side, streamed by the
ftkit serve code. Start a run: a recipe and overrides, validated in the form, trained in the background,
stoppable (checkpoints stay; resume from the form).

Listens on 127.0.0.1 (this machine only). With --host beyond loopback every request needs the token it
prints at start (or $FTKIT_UI_TOKEN); starting and stopping runs always need it and refuse cross-site
requests. Only files below --runs are ever read. See docs/ui.md.

examples:
  ftkit ui                                   the runs in ./runs, at http://127.0.0.1:7860/
  ftkit ui --runs sweeps/lr --port 8080
  FTKIT_UI_TOKEN=s3cret ftkit ui --host 0.0.0.0     (then open http://HOST:7860/?token=s3cret)
"""


def add_ui(commands: Commands) -> None:
    ui = _subcommand(commands, cmd_ui, UI_PAGE)
    ui.add_argument("--runs", type=Path, default=Path("runs"), metavar="DIR", help="the runs root (default ./runs)")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    ui.add_argument("--port", type=int, default=7860, help="TCP port (default 7860; 0 picks a free one)")
    ui.add_argument(
        "--recipes",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="the folder whose recipes the Start form may use (default: the current folder)",
    )


def cmd_ui(args: argparse.Namespace) -> int:
    from ftkit.ui.app import serve_ui

    return serve_ui(args.runs, **_options(args, "host", "port", "recipes"))


SWEEP_PAGE = """\
search hyperparameters with Optuna, choosing on validation, testing the winner once

Search the recipe keys a space file names (adapter.r: [4, 8, 16], train.learning_rate: {low: 1.0e-5, \
high: 1.0e-3, log: true}) with Optuna: the grid when every key is a list, TPE otherwise; trials whose \
in-training validation metric (eval.select_metric) falls behind are pruned. Each trial is an ordinary run \
directory, sweeps/<name>/trials/NNN/ (ftkit eval, compare, merge, export and chat work on it). Trials are \
ranked on validation; the test split is read only at the end, where the winner and the runner-up are \
evaluated once beside the base model, and the report says whether the winner is significantly better. \
Writes sweeps/<name>/: study.db (SQLite), trials/, test/, sweep.json, report.md and Optuna's plots (PNG).

Workers: several `--join` processes share a study in --storage (any SQLAlchemy URL, e.g. \
postgresql://user@host/db); one per GPU (CUDA_VISIBLE_DEVICES=0, =1, ...); on a CPU box each worker \
trains with every core, so on 2 cores one worker is the fastest. A killed worker's trial is failed after \
3 missed heartbeats and re-run once with the same parameters.

examples:
  ftkit sweep recipes/sentiment-smollm2-qlora.yaml --space recipes/sweeps/sentiment-lora.yaml --trials 6
  ftkit sweep recipes/sentiment-smollm2-qlora.yaml --space recipes/sweeps/sentiment-lora.yaml --resume
  ftkit sweep recipes/x.yaml --space s.yaml --storage postgresql://ftkit@db/sweeps --trials 40
  CUDA_VISIBLE_DEVICES=1 ftkit sweep recipes/x.yaml --space s.yaml --storage postgresql://ftkit@db/sweeps \
--trials 40 --join
"""


def add_sweep(commands: Commands) -> None:
    sweep = _subcommand(commands, cmd_sweep, SWEEP_PAGE)
    _recipe_args(sweep)
    sweep.add_argument("--space", type=Path, required=True, help="the space YAML: dotted recipe keys -> choices/range")
    sweep.add_argument("--trials", type=int, default=10, metavar="N", help="finished trials to reach (default 10)")
    sweep.add_argument("--timeout", type=float, metavar="SECONDS", help="stop starting trials after this long")
    sweep.add_argument("--storage", metavar="URL", help="SQLAlchemy URL of a shared study (default: SQLite in --dir)")
    sweep.add_argument("--dir", type=Path, dest="folder", help="sweep folder (default sweeps/<recipe name>)")
    mode = sweep.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the sweep's study after an interruption")
    mode.add_argument("--join", action="store_true", help="add this worker to a study others run (no final test)")
    sweep.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median", help="default median")
    sweep.add_argument("--heartbeat", type=int, default=10, metavar="SECONDS", help="trial heartbeat (default 10 s)")
    sweep.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")


def cmd_sweep(args: argparse.Namespace) -> int:
    from ftkit.sweep.workflow import Options, sweep

    names = ("trials", "timeout", "storage", "join", "resume", "folder", "heartbeat", "pruner", "seed")
    return sweep(args.recipe, args.overrides, args.space, Options(**_options(args, *names)))


COMMANDS: tuple[Callable[[Commands], None], ...] = (
    add_validate,
    add_train,
    add_data,
    add_eval,
    add_compare,
    add_merge,
    add_export,
    add_chat,
    add_serve,
    add_ui,
    add_sweep,
)


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
    for add in COMMANDS:
        add(commands)
    return parser


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
    logging.getLogger("gguf").setLevel(logging.WARNING)  # "This GGUF file is for Little Endian only" on every write


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
        print(
            f"ftkit: error: the disk is full ({error.filename or 'while writing'}); completed checkpoints and "
            "earlier files are intact: free space, then continue with --resume",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        resume = "; completed checkpoints are kept (resume with --resume)" if args.command == "train" else ""
        print(f"ftkit: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
