"""Held-out integrity: deterministic hash splits, overlap detection, and formats users bring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ftkit.cli import main
from ftkit.data.overlap import find_overlap
from ftkit.data.sources import DataError, read_rows
from ftkit.data.splits import hash_split, load_split
from ftkit.recipe import SplitConfig, load_recipe
from ftkit.tasks import get_task
from ftkit.tasks.sentiment import Sentiment

REVIEWS = [
    f"review number {i} says the {w} was {'great' if i % 2 else 'awful'} and arrived on day {i % 7}"
    for i, w in enumerate(["kettle", "lamp", "sofa", "drill", "mixer", "phone", "chair", "blanket"] * 10)
]


def _recipe(tmp_path: Path, data: dict, task: dict | None = None) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"task": task or {"name": "sentiment"}, "data": data}))
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_hash_split_is_deterministic_and_independent_of_file_order(tmp_path) -> None:
    rows = [{"text": t, "label": i % 2} for i, t in enumerate(REVIEWS)]
    pairs = [(f"f:row {i}", r) for i, r in enumerate(rows)]
    first = hash_split(pairs, SplitConfig(validation=0.1, test=0.2, seed=3))
    again = hash_split(list(reversed(pairs)), SplitConfig(validation=0.1, test=0.2, seed=3))
    for name in first:
        assert sorted(w for w, _ in first[name]) == sorted(w for w, _ in again[name])
    assert sum(len(v) for v in first.values()) == len(rows)
    assert 5 <= len(first["test"]) <= 30 and first["train"]
    other_seed = hash_split(pairs, SplitConfig(validation=0.1, test=0.2, seed=4))
    assert {w for w, _ in other_seed["test"]} != {w for w, _ in first["test"]}


def test_same_recipe_gives_byte_identical_splits(tmp_path) -> None:
    data = _jsonl(tmp_path / "all.jsonl", [{"text": t, "label": i % 2} for i, t in enumerate(REVIEWS)])
    recipe = load_recipe(_recipe(tmp_path, {"train": str(data), "split": {"test": 0.25, "validation": 0.1}}))
    task = get_task(recipe.task, 64)

    def dump() -> bytes:
        return json.dumps(
            {s: [e.where for e in load_split(recipe, task, s).examples] for s in ("train", "validation", "test")}
        ).encode()

    assert dump() == dump()
    splits = {s: {e.where for e in load_split(recipe, task, s).examples} for s in ("train", "validation", "test")}
    assert not (splits["train"] & splits["test"]) and not (splits["train"] & splits["validation"])
    assert len(splits["train"] | splits["validation"] | splits["test"]) == len(REVIEWS)


def test_overlap_finds_exact_and_near_duplicates() -> None:
    task = get_task(load_recipe_task(), 64)
    train = [task.make_example({"text": t, "label": 0}, f"train:row {i}") for i, t in enumerate(REVIEWS[:20])]
    test = [
        task.make_example({"text": REVIEWS[3].upper() + "!!", "label": 0}, "test:row 1"),  # exact after normalising
        task.make_example({"text": REVIEWS[5] + " truly", "label": 0}, "test:row 2"),  # near
        task.make_example({"text": "a completely different sentence about tea", "label": 0}, "test:row 3"),
    ]
    overlap = find_overlap(train, test, "test", threshold=0.8)
    assert [(a.where, b.where) for a, b in overlap.exact] == [("test:row 1", "train:row 3")]
    assert [(a.where, b.where) for a, b, _ in overlap.near] == [("test:row 2", "train:row 5")]


def load_recipe_task():
    from ftkit.tasks.sentiment import SentimentOptions

    return SentimentOptions(name="sentiment")


def test_planted_duplicates_are_reported_and_training_refuses(tmp_path, capsys) -> None:
    rows = [{"text": t, "label": i % 2} for i, t in enumerate(REVIEWS)]
    train = _jsonl(tmp_path / "train.jsonl", rows[:60])
    test = _jsonl(tmp_path / "test.jsonl", rows[60:] + rows[:3])  # three planted duplicates
    path = _recipe(tmp_path, {"train": str(train), "test": str(test)})
    assert main(["data", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "overlap train vs test: 3 exact" in out
    assert "3 test example(s) duplicate training examples" in err
    assert main(["train", str(path), f"output.dir={tmp_path / 'run'}"]) == 2
    assert "duplicate training examples" in capsys.readouterr().err
    assert not (tmp_path / "run" / "adapter").exists()


def test_data_report_shows_lengths_masking_and_memory(write_recipe, capsys) -> None:
    assert main(["data", str(write_recipe("inspect"))]) == 0
    out = capsys.readouterr().out
    for expected in (
        "train",
        "label balance (train): negative",
        "tokens/example p50",
        "EOS/end of turn carries loss in 32 of 32",
        "overlap train vs test: 0 exact",
        "peak memory estimate: ~",
        "GB",
        "(loss only on «...»)",
        "«",
    ):
        assert expected in out, expected


@pytest.mark.parametrize(("setting", "shown"), [("auto", True), (False, False)])
def test_the_memory_estimate_counts_the_dequantized_copies(write_recipe, capsys, setting, shown: bool) -> None:
    path = write_recipe(f"copies-{setting}", model={"quantization": "4bit", "dequantized_base": setting})
    assert main(["data", str(path)]) == 0
    assert ("GB of dequantized copies (model.dequantized_base)" in capsys.readouterr().out) is shown


def test_bad_rows_fail_by_default_and_can_be_skipped_with_a_count(tmp_path) -> None:
    rows = [
        {"text": "fine kettle", "label": "positive"},
        {"text": "", "label": "negative"},
        {"text": "ok", "label": "meh"},
    ]
    data = _jsonl(tmp_path / "d.jsonl", rows)
    recipe = load_recipe(_recipe(tmp_path, {"train": str(data), "test": str(data)}))
    with pytest.raises(DataError, match=r"d.jsonl:row 2: 'text' must be .*data.bad_rows: skip"):
        load_split(recipe, get_task(recipe.task, 64), "train")
    recipe = load_recipe(_recipe(tmp_path, {"train": str(data), "test": str(data), "bad_rows": "skip"}))
    loaded = load_split(recipe, get_task(recipe.task, 64), "train")
    assert len(loaded.examples) == 1 and len(loaded.skipped) == 2 and "row 3" in loaded.skipped[1]


def test_labels_can_be_inferred_from_training_data(tmp_path) -> None:
    train = _jsonl(
        tmp_path / "train.jsonl",
        [{"text": f"t{i}", "category": c} for i, c in enumerate(["card_arrival", "top_up", "pin"] * 2)],
    )
    test = _jsonl(tmp_path / "test.jsonl", [{"text": "x", "category": "unknown_intent"}])
    recipe = load_recipe(
        _recipe(
            tmp_path,
            {"train": str(train), "test": str(test), "columns": {"label": "category"}},
            {"name": "sentiment", "labels": None},
        )
    )
    task = get_task(recipe.task, 64)
    assert isinstance(task, Sentiment)
    assert task.needs_training_data()
    task.observe(load_split(recipe, task, "train").examples)
    assert task.labels == ["card_arrival", "pin", "top_up"]
    with pytest.raises(DataError, match="unknown label 'unknown_intent'"):
        load_split(recipe, task, "test")


def test_json_key_squad_and_parallel_sources(tmp_path) -> None:
    (tmp_path / "all.json").write_text(json.dumps({"train": [["hello there", "greet"]], "test": [["bye", "leave"]]}))
    assert read_rows(f"{tmp_path / 'all.json'}#test") == [{"0": "bye", "1": "leave"}]
    with pytest.raises(DataError, match="no top-level key 'dev'"):
        read_rows(f"{tmp_path / 'all.json'}#dev")
    squad = {
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": "Ana was born in 1990.",
                        "qas": [
                            {
                                "id": "q1",
                                "question": "When?",
                                "answers": [
                                    {"text": "1990", "answer_start": 16},
                                    {"text": "in 1990", "answer_start": 13},
                                ],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    recipe = load_recipe(
        _recipe(
            tmp_path,
            {"train": str(tmp_path / "squad.json"), "test": str(tmp_path / "squad.json"), "format": "squad"},
            {"name": "qa"},
        )
    )
    [example] = load_split(recipe, get_task(recipe.task, 128), "test").examples
    assert example.reference == ["1990", "in 1990"] and "Ana was born" in example.prompt
    (tmp_path / "text.txt").write_text("good\nbad\n")
    (tmp_path / "labels.txt").write_text("1\n0\n")
    assert read_rows({"text": str(tmp_path / "text.txt"), "label": str(tmp_path / "labels.txt")}) == [
        {"text": "good", "label": "1"},
        {"text": "bad", "label": "0"},
    ]
    (tmp_path / "labels.txt").write_text("1\n")
    with pytest.raises(DataError, match="different numbers of lines"):
        read_rows({"text": str(tmp_path / "text.txt"), "label": str(tmp_path / "labels.txt")})


def test_hub_sources_validate_offline_and_fail_clearly_without_a_network(tmp_path) -> None:
    recipe = load_recipe(
        _recipe(tmp_path, {"train": "hub:stanfordnlp/sst2#train", "test": "hub:stanfordnlp/sst2#validation"})
    )
    assert recipe.data.train == "hub:stanfordnlp/sst2#train"
    with pytest.raises(DataError, match="hub:stanfordnlp/sst2#train: cannot load from the hub"):
        read_rows(recipe.data.train)


def test_rows_too_long_to_encode_are_skipped_with_a_count_when_asked(
    write_recipe, sentiment_files, tmp_path, capsys
) -> None:
    rows = [json.loads(line) for line in sentiment_files["train"].read_text().splitlines()]
    indexed = _jsonl(
        tmp_path / "indexed.jsonl", [{"text": r["text"], "label": int(r["label"] == "positive")} for r in rows]
    )
    data = {"train": str(indexed), "validation": None, "test": str(indexed), "max_length": 16, "allow_overlap": True}
    task = {"labels": ["no", "an extremely long label " * 10]}
    assert main(["data", str(write_recipe("strict", task=task, data=data))]) == 2
    assert "the completion alone is" in capsys.readouterr().err
    assert main(["data", str(write_recipe("lenient", task=task, data=data | {"bad_rows": "skip"}))]) == 0
    out = capsys.readouterr().out
    positives = sum(r["label"] == "positive" for r in rows)
    assert f"{'train':<11}{len(rows) - positives:>7}{positives:>9}" in out and "the completion alone is" in out
