"""Recipe validation: every problem at once, one line each, naming the file, the YAML line and the key.

Recipes are written as raw text where a test asserts line numbers, so the expected lines can be
read straight off the test. Data files must exist for a recipe to validate, so each test gets
tiny jsonl files in its own tmp_path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from ftkit.errors import FtkitError
from ftkit.recipe import RecipeError, load_recipe
from ftkit.tasks.sentiment import SentimentOptions

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))

# Lines 1-6; tests append sections from line 7 on.
BASE = """\
task:
  name: sentiment
data:
  train: train.jsonl
  validation: validation.jsonl
  test: test.jsonl
"""

ROWS = [{"text": "great", "label": "positive"}, {"text": "awful", "label": "negative"}]


def _jsonl(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """tmp_path with train/validation/test jsonl files beside where the recipes go."""
    for split in ("train", "validation", "test"):
        _jsonl(tmp_path / f"{split}.jsonl")
    return tmp_path


def write(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path, overrides: Sequence[str] = ()) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, list(overrides))
    error = caught.value
    assert isinstance(error, FtkitError)  # the CLI turns these into one-line messages
    assert str(error) == "\n".join(error.problems)
    assert error.problems and all(line.strip() and "\n" not in line for line in error.problems)
    return error.problems


# --- shipped recipes --------------------------------------------------------------------------


def test_recipes_folder_has_recipes() -> None:
    assert SHIPPED, "recipes/*.yaml is empty; the parametrized test below would silently check nothing"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_recipe_validates_from_any_working_directory(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # paths resolve against the recipe's folder, not the cwd
    recipe = load_recipe(path)
    assert recipe.name
    for split in ("train", "validation", "test"):
        file = getattr(recipe.data, split)
        assert file is None or (Path(file).is_absolute() and Path(file).is_file())
    assert recipe.data.has_split(recipe.eval.split)


# --- unknown keys -----------------------------------------------------------------------------


def test_typo_keys_name_file_line_key_and_suggestion(folder: Path) -> None:
    path = write(folder, BASE + "adapter:\n  rr: 8\ntrian:\n  epochs: 1\n")
    assert sorted(problems(path)) == [
        f"{path}:8: unknown key 'adapter.rr' (did you mean 'r'?)",
        f"{path}:9: unknown key 'trian' (did you mean 'train'?)",
    ]


def test_typo_in_task_options_suggests_the_task_key(folder: Path) -> None:
    path = write(folder, BASE.replace("  name: sentiment\n", "  name: sentiment\n  lables: [a, b]\n"))
    assert problems(path) == [f"{path}:3: unknown key 'task.lables' (did you mean 'labels'?)"]


def test_unknown_key_with_nothing_close_has_no_suggestion(folder: Path) -> None:
    path = write(folder, BASE + "train:\n  zzzzzz: 1\n")
    assert problems(path) == [f"{path}:8: unknown key 'train.zzzzzz'"]


# --- types, ranges, literals ------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, key, line, fragment",
    [
        ("train:\n  batch_size: eight\n", "train.batch_size", 8, "valid integer"),
        ("adapter:\n  dropout: 1.5\n", "adapter.dropout", 8, "less than 1"),
        ("adapter:\n  r: 0\n", "adapter.r", 8, "greater than or equal to 1"),
        ("model:\n  quantization: 2bit\n", "model.quantization", 8, "'4bit', '8bit' or 'none'"),
        ("train:\n  epochs: 1\n  learning_rate: 0\n", "train.learning_rate", 9, "greater than 0"),
        ("  max_length: 4\n", "data.max_length", 7, "greater than or equal to 8"),  # continues data:
    ],
    ids=["type", "dropout-range", "rank-range", "literal", "lr-range", "max-length-range"],
)
def test_bad_value_is_one_line_naming_key_and_line(
    folder: Path, extra: str, key: str, line: int, fragment: str
) -> None:
    path = write(folder, BASE + extra)
    [problem] = problems(path)
    assert problem.startswith(f"{path}:{line}: {key}: ")
    assert fragment in problem


def test_target_modules_error_is_one_line(folder: Path) -> None:
    path = write(folder, BASE + "adapter:\n  target_modules: q_proj\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}:8: adapter.target_modules: ")
    assert "'all-linear'" in problem and "q_proj" in problem
    path = write(folder, BASE + "adapter:\n  target_modules: []\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}:8: adapter.target_modules: ")


def test_all_problems_reported_together(folder: Path) -> None:
    text = BASE + (
        "model:\n"  # 7
        "  quantization: 2bit\n"  # 8
        "adapter:\n"  # 9
        "  r: 0\n"  # 10
        "  dropout: 1.5\n"  # 11
        "  rr: 4\n"  # 12
        "train:\n"  # 13
        "  batch_size: eight\n"  # 14
    )
    path = write(folder, text)
    found = problems(path)
    assert len(found) == 5
    expected = {
        8: "model.quantization",
        10: "adapter.r",
        11: "adapter.dropout",
        12: "unknown key 'adapter.rr' (did you mean 'r'?)",
        14: "train.batch_size",
    }
    for line, text in expected.items():
        assert sum(p.startswith(f"{path}:{line}: ") and text in p for p in found) == 1, (line, found)


# --- data paths -------------------------------------------------------------------------------


def test_missing_data_file_names_key_and_resolved_path(folder: Path) -> None:
    path = write(folder, BASE.replace("train: train.jsonl", "train: sub/../missing.jsonl"))
    [problem] = problems(path)
    assert problem.startswith(f"{path}:4: data.train: file not found: ")
    assert str((folder / "missing.jsonl").resolve()) in problem
    assert ".." not in problem.split("file not found: ")[1].split()[0]


def test_paths_resolve_relative_to_recipe_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _jsonl(tmp_path / "x.jsonl")
    text = "task: {name: sentiment}\ndata:\n  train: ../../x.jsonl\n  test: ../../x.jsonl\n"
    path = write(tmp_path, text, name="recipes/deeper/r.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = load_recipe(path)
    assert recipe.data.train == str(data.resolve())
    assert recipe.data.test == str(data.resolve())
    assert recipe.data.validation is None
    assert recipe.name == "r"  # defaults to the file's stem


def test_subfolder_recipe_with_parent_relative_path(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "x.jsonl")
    path = write(
        tmp_path, "task: {name: sentiment}\ndata:\n  train: ../x.jsonl\n  test: ../x.jsonl\n", name="sub/r.yaml"
    )
    assert load_recipe(path).data.train == str(data.resolve())
    # The same relative path from the top folder points outside tmp_path's data: an error there.
    top = write(tmp_path, path.read_text(), name="top.yaml")
    assert any("data.train: file not found" in p for p in problems(top))


# --- task -------------------------------------------------------------------------------------


def test_unknown_task_name_suggests_close_task(folder: Path) -> None:
    path = write(folder, BASE.replace("name: sentiment", "name: sentimnt"))
    [problem] = problems(path)
    assert problem.startswith(f"{path}:2: task.name: unknown task 'sentimnt'")
    assert "did you mean 'sentiment'" in problem
    assert "available: chat, extract, qa, sentiment" in problem


def test_missing_task_section(folder: Path) -> None:
    path = write(folder, BASE.replace("task:\n  name: sentiment\n", ""))
    assert problems(path) == [f"{path}: missing required key 'task'"]


def test_task_without_name_lists_tasks(folder: Path) -> None:
    path = write(folder, BASE.replace("  name: sentiment\n", "  labels: [a, b]\n"))
    [problem] = problems(path)
    assert problem.startswith(f"{path}:1: task.name is required")
    assert "sentiment" in problem


def test_missing_data_section(folder: Path) -> None:
    path = write(folder, "task:\n  name: sentiment\n")
    assert problems(path) == [f"{path}: missing required key 'data'"]


@pytest.mark.parametrize(
    "labels", ["[positive]", "[a, a]", "[a, ' ']", "[]"], ids=["one", "duplicate", "blank", "empty"]
)
def test_sentiment_labels_need_two_distinct_non_empty(folder: Path, labels: str) -> None:
    path = write(folder, BASE.replace("  name: sentiment\n", f"  name: sentiment\n  labels: {labels}\n"))
    [problem] = problems(path)
    assert problem.startswith(f"{path}:3: task.labels: ")
    assert "two distinct, non-empty" in problem


def test_sentiment_labels_accept_three_classes(folder: Path) -> None:
    path = write(folder, BASE.replace("  name: sentiment\n", "  name: sentiment\n  labels: [bad, meh, good]\n"))
    task = load_recipe(path).task
    assert isinstance(task, SentimentOptions)
    assert task.labels == ["bad", "meh", "good"]


# --- eval consistency -------------------------------------------------------------------------


def test_eval_split_needs_its_data_file(folder: Path) -> None:
    path = write(folder, BASE.replace("  validation: validation.jsonl\n", "") + "eval:\n  split: validation\n")
    [problem] = problems(path)
    assert "eval.split is 'validation'" in problem
    assert "data.validation" in problem
    assert problem.startswith(str(path))


def test_eval_split_validation_ok_when_file_given(folder: Path) -> None:
    path = write(folder, BASE + "eval:\n  split: validation\n")
    assert load_recipe(path).eval.split == "validation"


def test_eval_metric_unknown_to_task_lists_choices(folder: Path) -> None:
    path = write(folder, BASE + "eval:\n  metrics: [accuracy, bleu]\n")
    [problem] = problems(path)
    assert "'bleu'" in problem and "'sentiment'" in problem
    assert "choose from ['accuracy', 'macro_f1']" in problem


def test_eval_metric_subset_ok(folder: Path) -> None:
    path = write(folder, BASE + "eval:\n  metrics: [macro_f1]\n")
    assert load_recipe(path).eval.metrics == ["macro_f1"]


# --- overrides --------------------------------------------------------------------------------


def test_overrides_applied_with_yaml_types(folder: Path) -> None:
    path = write(folder, BASE + "adapter:\n  r: 16\n")
    recipe = load_recipe(
        path,
        [
            "train.max_steps=20",
            "adapter.r=8",
            "model.quantization=8bit",
            "adapter.target_modules=[q_proj,v_proj]",
            "train.gradient_checkpointing=true",
            "data.columns.text=review",
        ],
    )
    assert recipe.train.max_steps == 20
    assert recipe.adapter.r == 8  # the override wins over the file
    assert recipe.model.quantization == "8bit"
    assert recipe.adapter.target_modules == ["q_proj", "v_proj"]
    assert recipe.train.gradient_checkpointing is True
    assert recipe.data.columns == {"text": "review"}
    assert recipe.train.epochs == 3  # untouched defaults stay


def test_bad_override_value_is_blamed_on_the_override(folder: Path) -> None:
    path = write(folder, BASE + "adapter:\n  r: 16\n")
    [problem] = problems(path, ["adapter.r=0"])
    assert problem.startswith("override 'adapter.r=0': adapter.r: ")
    assert str(path) not in problem  # the file's line 8 says r: 16, which is fine
    [problem] = problems(path, ["train.batch_size=eight"])
    assert problem.startswith("override 'train.batch_size=eight': train.batch_size: ")


def test_override_that_creates_a_typo_section_is_blamed_on_the_override(folder: Path) -> None:
    path = write(folder, BASE)
    assert problems(path, ["trian.max_steps=3"]) == [
        "override 'trian.max_steps=3': unknown key 'trian' (did you mean 'train'?)"
    ]


def test_override_of_task_name_is_blamed_on_the_override(folder: Path) -> None:
    path = write(folder, BASE)
    [problem] = problems(path, ["task.name=sentimnt"])
    assert problem.startswith("override 'task.name=sentimnt': task.name: unknown task 'sentimnt'")


def test_override_problems_reported_with_file_problems(folder: Path) -> None:
    path = write(folder, BASE + "train:\n  batch_size: eight\n")
    found = problems(path, ["adapter.dropout=1.5"])
    assert len(found) == 2
    assert any(p.startswith(f"{path}:8: train.batch_size: ") for p in found)
    assert any(p.startswith("override 'adapter.dropout=1.5': adapter.dropout: ") for p in found)


@pytest.mark.parametrize("override", ["train.max_steps", "=3", " =3"])
def test_override_without_key_value_is_an_error(folder: Path, override: str) -> None:
    path = write(folder, BASE)
    [problem] = problems(path, [override])
    assert problem.startswith(f"override '{override}': expected KEY=VALUE")


def test_override_into_a_value_from_the_file_is_not_a_section(folder: Path) -> None:
    path = write(folder, BASE + "train:\n  seed: 1\n")
    assert problems(path, ["train.seed.x=1"]) == ["override 'train.seed.x=1': train.seed is not a section"]


def test_override_into_a_default_value_is_an_error(folder: Path) -> None:
    path = write(folder, BASE)  # train.seed is a default here, not in the file
    [problem] = problems(path, ["train.seed.x=1"])
    assert problem.startswith("override 'train.seed.x=1': train.seed: ")


# --- unreadable recipes -----------------------------------------------------------------------


def test_invalid_yaml_reports_line(folder: Path) -> None:
    path = write(folder, "task:\n  name: [sentiment\ndata:\n  train: train.jsonl\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}:3: invalid YAML: ")


def test_yaml_list_at_top_level(folder: Path) -> None:
    path = write(folder, "- task\n- data\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}: ") and "mapping" in problem


def test_non_utf8_file(folder: Path) -> None:
    path = folder / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    [problem] = problems(path)
    assert problem.startswith(f"{path}: ") and "UTF-8" in problem


def test_missing_recipe_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert problems(path) == [f"{path}: recipe file not found"]


def test_folder_is_not_a_recipe(tmp_path: Path) -> None:
    assert problems(tmp_path) == [f"{tmp_path} is a directory, not a file; name a file inside it"]


def test_duplicate_key_names_both_lines(folder: Path) -> None:
    path = write(folder, BASE + "train:\n  learning_rate: 1e-4\n  epochs: 2\n  learning_rate: 3e-4\n")
    assert problems(path) == [f"{path}:10: duplicate key 'learning_rate' (first on line 8); keep one of them"]


def test_duplicate_section_names_both_lines(folder: Path) -> None:
    path = write(folder, BASE + "task:\n  name: qa\n")
    assert problems(path) == [f"{path}:7: duplicate key 'task' (first on line 1); keep one of them"]


def test_yaml_merge_keys_are_not_duplicates(folder: Path) -> None:
    text = BASE + "x_defaults: &d {epochs: 2}\ntrain:\n  <<: *d\n  max_steps: 3\n"
    path = write(folder, text)
    assert any("unknown key 'x_defaults'" in p for p in problems(path))


@pytest.mark.parametrize("opener, closer", [("[", "]"), ("{a: ", "}")], ids=["lists", "mappings"])
def test_deep_nesting_is_bounded_not_a_recursion_error(folder: Path, opener: str, closer: str) -> None:
    for depth in (40, 100_000):
        path = write(folder, BASE + "eval:\n  metrics: " + opener * depth + "1" + closer * depth + "\n")
        [problem] = problems(path)
        assert problem.startswith(str(path)) and "nest" in problem, problem


def test_alias_expansion_is_bounded(folder: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    path = write(folder, BASE + "\n".join(lines) + "\n")
    assert problems(path) == [f"{path}: expands to more than 100000 values (YAML aliases?); a recipe is small"]


def test_recipe_size_is_bounded(folder: Path) -> None:
    path = write(folder, BASE + "# " + "x" * (1 << 20) + "\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}: ") and "too large for a recipe" in problem


@pytest.mark.parametrize("text", ["", "# only a comment\n"], ids=["empty", "comment-only"])
def test_empty_recipe(folder: Path, text: str) -> None:
    path = write(folder, text)
    [problem] = problems(path)
    assert problem.startswith(f"{path}: ")


# --- round trip -------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["shipped", "custom"])
def test_to_yaml_round_trips(folder: Path, tmp_path: Path, source: str) -> None:
    if source == "shipped":
        recipe = load_recipe(SHIPPED[0])
    else:
        path = write(folder, BASE + "eval:\n  split: validation\n  metrics: [accuracy]\n")
        recipe = load_recipe(
            path,
            [
                "adapter.target_modules=[q_proj,v_proj]",
                "data.columns.text=review",
                "output.dir=out/run",
                "train.max_steps=7",
            ],
        )
    dumped = recipe.to_yaml()
    again_path = tmp_path / "dumped" / "resolved.yaml"  # another folder: paths must be absolute
    again_path.parent.mkdir()
    again_path.write_text(dumped, encoding="utf-8")
    again = load_recipe(again_path)
    assert again.model_dump() == recipe.model_dump()
    assert again.to_yaml() == dumped
    assert Path(yaml.safe_load(dumped)["data"]["train"]).is_absolute()


# --- model source -----------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["./nope", "x.gguf", "~/definitely-not-here-ftkit/model", "/no/such/folder"])
def test_model_source_that_looks_like_a_missing_path(folder: Path, source: str) -> None:
    path = write(folder, BASE + f"model:\n  source: {source}\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}:8: model.source: no such file or folder: ")


@pytest.mark.parametrize("hub_id", ["HuggingFaceTB/SmolLM2-135M-Instruct", "no-such-org-ftkit/no-such-model-ftkit"])
def test_model_source_hub_id_kept_as_is(folder: Path, hub_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The second id does not exist on the hub: validation must not look it up (online, no cache needed).
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    path = write(folder, BASE + f"model:\n  source: {hub_id}\n")
    assert load_recipe(path).model.source == hub_id


def test_model_source_default(folder: Path) -> None:
    path = write(folder, BASE + "model:\n  source: default\n")
    assert load_recipe(path).model.source == "default"
    assert load_recipe(write(folder, BASE, "plain.yaml")).model.source == "default"


def test_model_source_local_paths_become_absolute(folder: Path) -> None:
    (folder / "models" / "mine").mkdir(parents=True)
    (folder / "models" / "mine" / "config.json").write_text('{"model_type": "llama"}')
    (folder / "models" / "mine" / "model.safetensors").write_bytes(b"")
    (folder / "weights.gguf").write_bytes(b"GGUF")
    recipe = load_recipe(write(folder, BASE + "model:\n  source: models/mine\n"))
    assert recipe.model.source == str((folder / "models" / "mine").resolve())
    recipe = load_recipe(write(folder, BASE + "model:\n  source: weights.gguf\n"))
    assert recipe.model.source == str((folder / "weights.gguf").resolve())
