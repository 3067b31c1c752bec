"""Property-based bad input: malformed recipes and data never produce a traceback.

Every case must end in exit code 0 (it happened to be valid) or 2 with only one-line
"ftkit: error:" messages on stderr, and must never create a run directory. Run counts are set
per category so the whole file stays within a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftkit.cli import main
from ftkit.data.prepared import encode_examples
from ftkit.data.sources import DataError
from ftkit.data.splits import load_split
from ftkit.recipe import RecipeError, load_recipe
from ftkit.tasks import get_task


def cases(n: int) -> settings:
    return settings(
        max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
    )


KEYS = [
    "model",
    "adapter",
    "task",
    "data",
    "train",
    "eval",
    "output",
    "name",
    "source",
    "quantization",
    "r",
    "alpha",
    "dropout",
    "target_modules",
    "labels",
    "prompt_template",
    "max_length",
    "epochs",
    "max_steps",
    "batch_size",
    "learning_rate",
    "split",
    "columns",
    "format",
    "line_pattern",
    "metrics",
    "bad_rows",
    "trian",
    "adaptr",
    "seed",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.sampled_from(["4bit", "sentiment", "qa", "chat", "default", "all-linear", "lines"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    max_leaves=12,
)


def _check_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> int:
    code = main(args)
    err = capsys.readouterr().err
    assert code in (0, 2)
    assert "Traceback" not in err
    if code == 2:
        assert err and all(line.startswith("ftkit: error:") for line in err.splitlines()), err
    return code


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "ok.jsonl"
    path.write_text('{"text": "fine", "label": "positive"}\n')
    return path


@cases(900)
@given(tree=st.dictionaries(st.sampled_from(KEYS), values, max_size=8))
def test_structured_recipes_validate_or_fail_in_one_line(tree, tmp_path_factory, capsys, data_file) -> None:
    folder = tmp_path_factory.mktemp("r")
    tree = dict(tree)
    if isinstance(tree.get("data"), dict):  # half of the cases point at a real file, so later checks run too
        tree["data"].setdefault("train", str(data_file))
    (folder / "r.yaml").write_text(yaml.safe_dump(tree, allow_unicode=True))
    _check_cli(["validate", str(folder / "r.yaml")], capsys)
    assert not (folder / "runs").exists()


@cases(500)
@given(
    raw=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300).map(str.encode),
        st.text(alphabet=string.printable, min_size=5000, max_size=20000).map(str.encode),
    )
)
def test_junk_recipe_files_fail_in_one_line(raw, tmp_path_factory, capsys) -> None:
    path = tmp_path_factory.mktemp("junk") / "r.yaml"
    path.write_bytes(raw)
    _check_cli(["validate", str(path)], capsys)


@cases(300)
@given(overrides=st.lists(st.text(alphabet=string.ascii_letters + "._=[]{}:, -0123456789", max_size=30), max_size=4))
def test_junk_overrides_fail_in_one_line(overrides, capsys) -> None:
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "sentiment-smollm2-qlora.yaml"
    _check_cli(["validate", str(recipe), *[o for o in overrides if not o.startswith("-")]], capsys)


rows = st.dictionaries(
    st.sampled_from(["text", "label", "question", "answer", "context", "messages", "extra"]), values, max_size=4
)


@cases(400)
@given(task=st.sampled_from(["sentiment", "qa", "chat"]), data=st.lists(rows, min_size=1, max_size=6))
def test_malformed_rows_are_data_errors_naming_the_row(task, data, tmp_path_factory, tokenizer) -> None:
    folder = tmp_path_factory.mktemp("rows")
    path = folder / "d.jsonl"
    path.write_text("".join(json.dumps(row, default=str) + "\n" for row in data))
    (folder / "r.yaml").write_text(
        yaml.safe_dump({"task": {"name": task}, "data": {"train": str(path), "test": str(path)}})
    )
    recipe = load_recipe(folder / "r.yaml")
    task_ = get_task(recipe.task, 64)
    try:
        encode_examples(task_, tokenizer, load_split(recipe, task_, "train").examples)
    except DataError as error:
        assert str(path) in str(error) and "\n" not in str(error)


@cases(200)
@given(raw=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".parquet"]))
def test_junk_data_files_are_data_errors(raw, suffix, tmp_path_factory, tokenizer) -> None:
    folder = tmp_path_factory.mktemp("junkdata")
    path = folder / f"d{suffix}"
    path.write_bytes(raw)
    (folder / "r.yaml").write_text(
        yaml.safe_dump({"task": {"name": "sentiment"}, "data": {"train": str(path), "test": str(path)}})
    )
    try:
        recipe = load_recipe(folder / "r.yaml")
        task = get_task(recipe.task, 64)
        encode_examples(task, tokenizer, load_split(recipe, task, "train").examples)
    except (DataError, RecipeError) as error:
        assert str(error)


@cases(40)
@given(data=st.lists(rows, min_size=1, max_size=4))
def test_train_on_bad_data_fails_before_creating_a_run_directory(
    data, tmp_path_factory, tiny_model_dir, capsys
) -> None:
    folder = tmp_path_factory.mktemp("train")
    path = folder / "d.jsonl"
    path.write_text("".join(json.dumps(row, default=str) + "\n" for row in data))
    recipe = {
        "model": {"source": str(tiny_model_dir), "quantization": "none"},
        "task": {"name": "sentiment"},
        "data": {"train": str(path), "test": str(path), "allow_overlap": True},
        "train": {"max_steps": 1},
        "output": {"dir": str(folder / "run")},
    }
    (folder / "r.yaml").write_text(yaml.safe_dump(recipe))
    if _check_cli(["train", str(folder / "r.yaml"), "--no-eval"], capsys) == 2:
        assert not (folder / "run").exists()


# --- wave two: model sources, templates, file kinds, YAML shapes --------------------------------------------


def _kind(folder: Path, kind: str) -> Path:
    """A real filesystem object of each kind a user might point a recipe at by mistake."""
    target = folder / f"obj-{kind}"
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "loop":
        target.symlink_to(target)
    elif kind == "broken":
        target.symlink_to(folder / "gone")
    elif kind == "device":
        return Path("/dev/null")
    elif kind == "text":
        target.write_text("hello")
    elif kind == "fake-gguf":
        target = target.with_suffix(".gguf")
        target.write_bytes(b"GGUX" + bytes(20))
    elif kind == "config-only":
        target.mkdir()
        (target / "config.json").write_text('{"model_type": "llama"}')
    elif kind == "bad-config":
        target.mkdir()
        (target / "config.json").write_text("{")
    return target


FILE_KINDS = ["directory", "fifo", "loop", "broken", "device", "text", "fake-gguf", "config-only", "bad-config"]
hub_ids = st.from_regex(r"\A[A-Za-z0-9._-]{0,12}(/[A-Za-z0-9._ -]{0,12}){0,2}\Z", fullmatch=True)
source_texts = st.one_of(
    hub_ids, st.text(max_size=30), st.sampled_from(["default", "./x", "~/x", "/", ".gguf", "a.gguf"])
)


@cases(150)
@given(source=source_texts, kind=st.none() | st.sampled_from(FILE_KINDS))
def test_model_sources_validate_or_fail_in_one_line(source, kind, tmp_path_factory, capsys, data_file) -> None:
    folder = tmp_path_factory.mktemp("src")
    chosen = str(_kind(folder, kind)) if kind else source
    recipe = {"model": {"source": chosen}, "task": {"name": "sentiment"}, "data": {"train": str(data_file)}}
    (folder / "r.yaml").write_text(yaml.safe_dump(recipe | {"eval": {"split": "test"}}))
    code = _check_cli(["validate", str(folder / "r.yaml")], capsys)
    if kind:
        assert code == 2, f"a {kind} is not a model source"


template_texts = st.text(alphabet="{}!:.[]0 rsatext_field_listcontquion\n", max_size=40) | st.sampled_from(
    ["{text}", "{text!r}", "{text.__class__}", "{text[0]}", "{text:>9}", "{{text}}", "{", "}", "{}"]
)


@cases(400)
@given(task=st.sampled_from(["sentiment", "qa", "extract"]), template=template_texts)
def test_templates_validate_or_fail_in_one_line_and_render_plainly(task, template, tmp_path_factory, capsys) -> None:
    folder = tmp_path_factory.mktemp("tpl")
    row = {"text": "TEXT", "question": "Q?", "context": "CTX", "label": "positive", "answer": "a", "fields": {}}
    data = folder / "d.jsonl"
    data.write_text(json.dumps(row) + "\n")
    recipe = {"task": {"name": task, "prompt_template": template}, "data": {"train": str(data), "test": str(data)}}
    (folder / "r.yaml").write_text(yaml.safe_dump(recipe))
    if _check_cli(["validate", str(folder / "r.yaml")], capsys) == 0:
        loaded = load_recipe(folder / "r.yaml")
        [example] = load_split(loaded, get_task(loaded.task, 64), "train").examples
        assert "<class" not in example.prompt and "object at 0x" not in example.prompt


@cases(60)
@given(kind=st.sampled_from(FILE_KINDS), key=st.sampled_from(["train", "test", "validation"]))
def test_data_paths_of_every_kind_fail_in_one_line(kind, key, tmp_path_factory, capsys, data_file) -> None:
    folder = tmp_path_factory.mktemp("kind")
    data = {"train": str(data_file), "test": str(data_file)} | {key: str(_kind(folder, kind))}
    (folder / "r.yaml").write_text(yaml.safe_dump({"task": {"name": "sentiment"}, "data": data}))
    code = _check_cli(["validate", str(folder / "r.yaml")], capsys)
    assert code == 2 or kind in ("text", "fake-gguf"), f"a {kind} is not a data file"


yaml_keys = st.sampled_from(["task", "data", "train", "name", "learning_rate", "epochs", "<<", "model"])


def _yaml_shape(draw: st.DrawFn) -> str:
    """YAML text of shapes a generator of values never makes: duplicated keys, deep flow nesting, anchors,
    aliases, merge keys, odd indentation."""
    depth = draw(st.integers(0, 80))
    lines = ["task: {name: sentiment}", "data: {train: d.jsonl}"]
    lines += [
        f"{key}: {draw(st.sampled_from(['1', 'x', '&a 1', '*a', '[1, 2]', '{}']))}"
        for key in draw(st.lists(yaml_keys, max_size=6))
    ]
    if draw(st.booleans()):
        lines.append("eval: {metrics: " + "[" * depth + "accuracy" + "]" * depth + "}")
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(["train:", "  epochs: 1", "    epochs: 2", "  <<: *a", "&b x: 1"])))
    return "\n".join(draw(st.permutations(lines))) + "\n"


@cases(250)
@given(text=st.composite(_yaml_shape)())
def test_yaml_shapes_fail_in_one_line(text, tmp_path_factory, capsys, data_file) -> None:
    folder = tmp_path_factory.mktemp("yaml")
    (folder / "d.jsonl").write_text(data_file.read_text())
    (folder / "r.yaml").write_text(text)
    _check_cli(["validate", str(folder / "r.yaml")], capsys)
