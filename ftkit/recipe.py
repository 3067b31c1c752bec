"""The recipe: one YAML file that says what to fine-tune, on what, how, and how to judge it.

Validation is all-or-nothing and happens before any model or data is loaded. Every problem is
reported at once, one line each, naming the key, the YAML line and (for typos) the key that was
probably meant, so a user fixes a recipe in one pass instead of one traceback at a time.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import ErrorDetails

from ftkit import model_sources, paths
from ftkit.errors import FtkitError
from ftkit.tasks import TaskSection, task_names


class RecipeError(FtkitError):
    """A recipe that does not validate; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


HUB_PREFIX = "hub:"


def _resolve_source(value: Any, info: ValidationInfo) -> Any:
    """Resolve data sources against the recipe's folder and insist that the files exist.

    A source is a file (`train.jsonl`), a key inside a JSON file (`all.json#train`), a hub
    dataset (`hub:stanfordnlp/sst2#validation`, split after `#`), or, for corpora kept as parallel
    line files, a mapping of column to file (`{text: t.txt, label: l.txt}`).
    """
    if value is None:
        return None
    base = Path((info.context or {}).get("base_dir", "."))
    if isinstance(value, dict):
        return {column: str(_existing(base, str(path))) for column, path in value.items()}
    if str(value).startswith(HUB_PREFIX):
        return value  # a hub dataset: fetched by `datasets` at load time (online users)
    path, sep, field = str(value).partition("#")
    return f"{_existing(base, path)}{sep}{field}"


def _existing(base: Path, path: str) -> Path:
    """The absolute path of a data file, or a ValueError saying what is there instead (see `ftkit.paths`)."""
    candidate = paths.absolute(base, path)
    found = paths.problem(candidate)
    if found is not None:
        raise ValueError(f"{found} (paths are relative to the recipe's folder {base})")
    return Path(os.path.realpath(candidate))


class ModelConfig(Section):
    source: str = Field(
        default="default",
        description="'default' (SmolLM2-135M-Instruct, shipped), a local HF folder, a .gguf file, or a hub id",
    )
    quantization: Literal["4bit", "8bit", "none"] = "4bit"
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="'auto' = float32 on CPU (fast there), bfloat16 on GPUs that support it"
    )
    revision: str | None = None
    trust_remote_code: bool = False
    dequantized_base: bool | Literal["auto"] = Field(
        default="auto",
        description="run a 4-bit base against dequantized copies of its frozen weights (same numbers, faster on a "
        "CPU, 4-8x the 4-bit weights' memory); 'auto' = on a CPU when they take <= 1/4 of the free memory, for "
        "inference too unless bitsandbytes has its fused AVX512-BF16 kernel",
    )

    @field_validator("source")
    @classmethod
    def _source_is_a_model(cls, source: str, info: ValidationInfo) -> str:
        """Paths become absolute and must be a model folder or a GGUF file; hub ids must be well-formed,
        and cached when offline (`ftkit.model_sources`; no weights are read)."""
        base = Path((info.context or {}).get("base_dir", "."))
        return model_sources.check_source(source, base)


class AdapterConfig(Section):
    r: int = Field(default=16, ge=1, le=1024, description="LoRA rank")
    alpha: float = Field(default=32, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        default="all-linear", description="module names to adapt, or 'all-linear' (every linear layer but the LM head)"
    )
    use_dora: bool = False
    use_rslora: bool = False

    @field_validator("target_modules", mode="before")
    @classmethod
    def _modules(cls, value: Any) -> Any:
        """One clear message instead of one per member of the union."""
        if value == "all-linear" or (
            isinstance(value, list) and value and all(isinstance(m, str) and m for m in value)
        ):
            return value
        raise ValueError(
            f"must be 'all-linear' or a non-empty list of module names, e.g. [q_proj, v_proj] (got {value!r:.60})"
        )


DataSource = str | dict[str, str]


class SplitConfig(Section):
    """Carve missing validation/test splits out of the training file, by a hash of each row's content."""

    validation: float = Field(default=0.0, ge=0, lt=1, description="share of rows for validation")
    test: float = Field(default=0.1, ge=0, lt=1, description="share of rows for test")
    seed: int = Field(default=0, description="changes which rows land where, identically on every machine")

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitConfig:
        if self.validation + self.test >= 1:
            raise ValueError("split.validation + split.test must leave rows for training (sum < 1)")
        return self


class DataConfig(Section):
    train: DataSource = Field(description="a file, 'file.json#key', or {column: file} for parallel line files")
    validation: DataSource | None = None
    test: DataSource | None = None
    split: SplitConfig | None = Field(
        default=None, description="split train by content hash when validation/test files are absent"
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="task column -> column in the files, e.g. {text: review_body}"
    )
    max_length: int = Field(default=256, ge=8, le=131072, description="tokens per example, prompt + completion")
    format: Literal["auto", "jsonl", "json", "csv", "tsv", "parquet", "squad", "lines"] = Field(
        default="auto",
        description="'auto' picks by file extension; 'squad' flattens SQuAD JSON; "
        "'lines' parses each line with line_pattern",
    )
    line_pattern: str | None = Field(
        default=None,
        description="for format 'lines': a regex whose named groups become columns, "
        "e.g. '^(?P<label>[01]) (?P<text>.*)$'",
    )

    bad_rows: Literal["fail", "skip"] = Field(default="fail", description="'skip' drops bad rows and reports the count")
    allow_overlap: bool = Field(default=False, description="let exact train/test duplicates through (not recommended)")
    near_duplicate_jaccard: float = Field(
        default=0.8, gt=0, le=1, description="word-trigram Jaccard that counts as a near duplicate"
    )

    _sources = field_validator("train", "validation", "test", mode="before")(_resolve_source)

    def has_split(self, name: str) -> bool:
        """Whether the recipe provides this split, as its own file or as a share of train."""
        if name == "train" or getattr(self, name) is not None:
            return True
        return bool(self.split and getattr(self.split, name) > 0)

    @model_validator(mode="after")
    def _line_pattern(self) -> DataConfig:
        if self.format == "lines":
            if not self.line_pattern:
                raise ValueError("data.format 'lines' needs data.line_pattern, a regex with named groups")
            try:
                groups = re.compile(self.line_pattern).groupindex
            except re.error as error:
                raise ValueError(f"data.line_pattern is not a valid regex: {error}") from None
            if not groups:
                raise ValueError("data.line_pattern needs named groups, e.g. (?P<text>.*)")
        return self


class EarlyStoppingConfig(Section):
    """Stop when the validation metric has not improved by more than `min_delta` in `patience` evaluations."""

    patience: int = Field(ge=1, description="evaluations without improvement before training stops")
    min_delta: float = Field(default=0.0, ge=0, description="smallest change of the metric that counts as improvement")


class TrainConfig(Section):
    epochs: float = Field(default=3, gt=0)
    max_steps: int | None = Field(default=None, ge=1, description="optimizer steps; overrides epochs when set")
    batch_size: int = Field(default=8, ge=1, description="examples per micro-batch")
    grad_accum: int = Field(default=1, ge=1, description="micro-batches per optimizer step")
    learning_rate: float = Field(default=2e-4, gt=0, le=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    seed: int = 42
    eval_every: int | None = Field(
        default=None, ge=1, description="steps between validation losses; default once per epoch"
    )
    save_every: int = Field(default=50, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(default=2, ge=1)
    log_every: int = Field(default=5, ge=1, description="steps between log lines")
    gradient_checkpointing: bool = False
    group_by_length: bool = Field(default=True, description="batch similar lengths together to cut padding")
    keep: Literal["auto", "best", "last"] = Field(
        default="auto",
        description="which adapter the run keeps: 'best' by the validation metric (eval.select_metric), 'last', "
        "or 'auto' = best when there is a validation split, else last",
    )
    early_stopping: EarlyStoppingConfig | None = Field(
        default=None, description="{patience: K, min_delta: d} on the validation metric; needs keep best/auto"
    )
    report_to: list[str] = Field(
        default_factory=list,
        description="trackers (transformers integrations): tensorboard, mlflow, wandb (offline), ...; none by default",
    )


class EvalConfig(Section):
    split: Literal["test", "validation"] = "test"
    metrics: list[str] | None = Field(default=None, description="default: all of the task's metrics")
    batch_size: int = Field(default=16, ge=1)
    max_examples: int | None = Field(
        default=None, ge=1, description="evaluate a seeded sample of this many rows (stratified by label)"
    )
    seed: int = Field(default=0, description="which rows the max_examples sample draws")
    bootstrap: int = Field(default=1000, ge=100, description="resamples for confidence intervals")
    select_metric: str | None = Field(
        default=None, description="validation metric computed during training and used by train.keep; default primary"
    )
    during_training_examples: int | None = Field(
        default=None, ge=1, description="validation rows (seeded sample) the metric uses during training; default all"
    )


class OutputConfig(Section):
    dir: Path | None = Field(default=None, description="run directory; default runs/<recipe name>")


class Recipe(Section):
    name: str | None = None
    model: ModelConfig = ModelConfig()
    adapter: AdapterConfig = AdapterConfig()
    task: TaskSection
    data: DataConfig
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        from ftkit.tasks import get_task

        if not self.data.has_split(self.eval.split):
            raise ValueError(
                f"eval.split is '{self.eval.split}' but data.{self.eval.split} names no file "
                "and data.split gives it no share"
            )
        known = get_task(self.task, self.data.max_length).metrics
        unknown = [m for m in self.eval.metrics or [] if m not in known]
        if unknown:
            raise ValueError(
                f"eval.metrics {unknown} are not metrics of task '{self.task.name}'; choose from {list(known)}"
            )
        self._check_selection(known)
        return self

    def _check_selection(self, known: Sequence[str]) -> None:
        """The in-training metric must be the task's; keeping the best or stopping early needs a validation split."""
        if self.eval.select_metric is not None and self.eval.select_metric not in known:
            raise ValueError(
                f"eval.select_metric '{self.eval.select_metric}' is not a metric of task '{self.task.name}'; "
                f"choose from {list(known)}"
            )
        validation = self.data.has_split("validation")
        if self.train.keep == "best" and not validation:
            raise ValueError(
                "train.keep is 'best' but there is no validation split to choose by; "
                "add data.validation or data.split.validation, or set train.keep: last"
            )
        if self.train.early_stopping is not None and (self.train.keep == "last" or not validation):
            raise ValueError(
                "train.early_stopping stops on the validation metric and keeps the best adapter: it needs a "
                "validation split and train.keep best or auto"
            )

    @property
    def run_dir(self) -> Path:
        return self.output.dir or Path("runs") / (self.name or "run")

    def to_yaml(self) -> str:
        """The fully resolved recipe (absolute paths, every default filled in)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe, or raise `RecipeError` listing every problem."""
    path = Path(path)
    raw, lines = _read_yaml(path)
    raw = {
        key: {} if value is None and key in Recipe.model_fields and key != "name" else value
        for key, value in raw.items()
    }
    origins = {tuple(k): str(path) + (f":{n}" if n else "") for k, n in lines.items()}
    for override in overrides:
        for keys in _apply_override(raw, override):
            origins[keys] = f"override '{override}'"
    raw.setdefault("name", path.stem)
    try:
        return Recipe.model_validate(raw, context={"base_dir": Path(os.path.realpath(path.parent))})
    except ValidationError as error:
        raise RecipeError([_describe(problem, str(path), origins) for problem in error.errors()]) from None


MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of settings; a megabyte is a mistake (a data file?)
MAX_DEPTH = 32  # sections nest two or three levels; deeper is not a recipe, and the parser recurses
MAX_NODES = 100_000  # YAML aliases can expand a small file into billions of values ("billion laughs")


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """The YAML mapping and, for each dotted key path, the line it is on.

    The text is bounded in size before it is parsed, and the parsed tree in depth and size before it
    is built into Python objects; a duplicated key is an error naming both lines (YAML libraries
    silently keep the last one, so `learning_rate` written twice would train with whichever came last).
    """
    unusable = paths.problem(path)
    if unusable is not None:
        raise RecipeError([f"{path}: recipe file not found" if unusable.startswith("file not found") else unusable])
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(
            [
                f"{path}: {size} bytes is too large for a recipe (at most {MAX_RECIPE_BYTES}); "
                "is it a data file? name data files under data:"
            ]
        )
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_tree(node, path)
        raw = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise RecipeError([f"{path}: not a UTF-8 text file; a recipe is YAML text"]) from None
    except RecursionError:
        raise RecipeError([f"{path}: nested too deeply to parse (a recipe nests at most {MAX_DEPTH} levels)"]) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RecipeError([f"{where}: invalid YAML: {problem}"]) from None
    if not isinstance(raw, dict):
        raise RecipeError([f"{path}: a recipe must be a YAML mapping of sections (model:, task:, data:, ...)"])
    lines: dict[tuple[str, ...], int] = {}
    _collect_lines(node, (), lines)
    return raw, lines


def _check_tree(root: yaml.Node | None, path: Path) -> None:
    """Refuse duplicate keys (naming both lines), nesting deeper than MAX_DEPTH, and alias expansion past MAX_NODES.

    Walked with an explicit stack, so a deep tree cannot exhaust Python's recursion limit here.
    """
    stack: list[tuple[yaml.Node, int]] = [(root, 1)] if root is not None else []
    visited = 0
    while stack:
        node, depth = stack.pop()
        visited += 1
        if visited > MAX_NODES:
            raise RecipeError([f"{path}: expands to more than {MAX_NODES} values (YAML aliases?); a recipe is small"])
        if depth > MAX_DEPTH:
            raise RecipeError(
                [f"{path}:{node.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep; a recipe nests a few"]
            )
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                name, line = str(key.value), key.start_mark.line + 1
                if isinstance(key, yaml.ScalarNode) and name in seen and key.tag != "tag:yaml.org,2002:merge":
                    raise RecipeError(
                        [f"{path}:{line}: duplicate key '{name}' (first on line {seen[name]}); keep one of them"]
                    )
                seen.setdefault(name, line)
                stack += [(key, depth + 1), (value, depth + 1)]
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, depth + 1) for item in node.value]


def _collect_lines(node: yaml.Node | None, prefix: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            here = (*prefix, str(key.value))
            lines[here] = key.start_mark.line + 1
            _collect_lines(value, here, lines)


def _apply_override(raw: dict[str, Any], override: str) -> list[tuple[str, ...]]:
    """Apply `a.b.c=value`; the value is parsed as YAML, so `8`, `true` and `[q_proj]` get their types.

    Returns the key paths the override set: the key itself and any section it had to create, so
    that a problem with either (`trian.max_steps=3`) is reported as coming from the override.
    """
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise RecipeError([f"override '{override}': expected KEY=VALUE, e.g. train.max_steps=20"])
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    node = raw
    created: list[tuple[str, ...]] = []
    for i, part in enumerate(parts[:-1]):
        if part not in node:
            created.append(tuple(parts[: i + 1]))
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError([f"override '{override}': {'.'.join(parts[: i + 1])} is not a section"])
        node = child
    node[parts[-1]] = value
    return [*created, tuple(parts)]


def _describe(problem: ErrorDetails, path: str, origins: dict[tuple[str, ...], str]) -> str:
    """One line for one pydantic error, located at the YAML line or the override that set the key."""
    keys, allowed = _walk(problem["loc"])
    dotted = ".".join(keys) or "recipe"
    kind = problem["type"]
    located = [*keys, "name"] if kind.startswith("union_tag") else keys  # a task's tag sits on its `name:` line
    where = next(
        (origins[tuple(located[:n])] for n in range(len(located), 0, -1) if tuple(located[:n]) in origins), path
    )
    if kind == "extra_forbidden":
        return f"{where}: unknown key '{dotted}'{_did_you_mean(keys[-1], allowed)}"
    if kind == "missing":
        return f"{where}: missing required key '{dotted}'"
    if kind == "union_tag_invalid":
        tag = problem["ctx"]["tag"]
        return (
            f"{where}: {dotted}.name: unknown task '{tag}'{_did_you_mean(tag, task_names())}; "
            f"available: {', '.join(task_names())}"
        )
    if kind == "union_tag_not_found":
        return f"{where}: {dotted}.name is required; available tasks: {', '.join(task_names())}"
    message = problem["msg"].removeprefix("Value error, ")
    got = problem.get("input")
    shown = "" if isinstance(got, (dict, list)) or kind == "value_error" else f" (got {got!r:.60})"
    return f"{where}: {dotted}: {message}{shown}"


def _walk(loc: tuple[Any, ...]) -> tuple[list[str], list[str]]:
    """Display keys for a pydantic error location, and the keys allowed beside the last one.

    Discriminated unions insert the tag into the location (`task.sentiment.labels`); it is
    dropped so the user sees the key as written in the YAML.
    """
    model: type[BaseModel] | None = Recipe
    allowed: list[str] = list(Recipe.model_fields)
    keys: list[str] = []
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        keys.append(str(part))
        field = model.model_fields.get(part) if model and isinstance(part, str) else None
        allowed = list(model.model_fields) if model else []
        if field is None:
            model = None
            continue
        members = [
            a
            for a in (get_args(field.annotation) or (field.annotation,))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if field.discriminator and parts:
            tag = parts.pop(0)
            members = [m for m in members if get_args(m.model_fields["name"].annotation) == (tag,)]
        model = members[0] if members else None
    return keys, allowed


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
