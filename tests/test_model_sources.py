"""`model.source` is checked by `ftkit validate` without loading weights, and every loading failure is one line.

Real files throughout: a folder with a config and a corrupt weights file (validate says ok, since it reads no
weights; train says which file is corrupt), a text file and a fake GGUF as sources, an adapter folder, a hub
id while offline with an empty hub cache and with one that holds it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from ftkit.cli import main
from ftkit.model_sources import check_source

ONE_LINE = "ftkit: error: "


def _recipe(tmp_path: Path, source: str, **train: object) -> Path:
    rows = [{"text": f"review {i}", "label": ["negative", "positive"][i % 2]} for i in range(8)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "r.yaml"
    path.write_text(
        f"model: {{source: '{source}', quantization: none}}\ntask: {{name: sentiment}}\n"
        f"data: {{train: d.jsonl, test: d.jsonl, allow_overlap: true}}\ntrain: {{max_steps: 1}}\n"
        f"output: {{dir: '{tmp_path / 'run'}'}}\n"
    )
    return path


def _one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith(ONE_LINE)]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n") and "Traceback" not in err, err
    return errors[0]


def test_a_text_file_as_model_source_is_not_a_model(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    err = _one_line_error(["validate", str(_recipe(tmp_path, "notes.txt"))], capsys)
    assert "model.source: " in err and "notes.txt is a file but not a model" in err


def test_a_fake_gguf_is_refused_by_its_header(tmp_path: Path, capsys) -> None:
    (tmp_path / "m.gguf").write_bytes(b"PK\x03\x04 not gguf")
    err = _one_line_error(["validate", str(_recipe(tmp_path, "m.gguf"))], capsys)
    assert "m.gguf is not a GGUF file (it starts with b'PK\\x03\\x04', not b'GGUF')" in err


@pytest.mark.parametrize(
    "files, expected",
    [
        ({}, "is a folder but not a model folder (no config.json)"),
        ({"adapter_config.json": "{}"}, "is a LoRA adapter folder, not a base model"),
        ({"config.json": "{not json"}, "config.json is not valid JSON"),
        ({"config.json": "{}"}, "has no 'model_type'"),
        ({"config.json": '{"model_type": "llama"}', "pytorch_model.bin": ""}, "holds pickle weights (*.bin) only"),
        ({"config.json": '{"model_type": "llama"}'}, "neither *.safetensors weights nor a tokenizer"),
    ],
)
def test_folders_that_are_not_model_folders(files: dict[str, str], expected: str, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    err = _one_line_error(["validate", str(_recipe(tmp_path, str(folder)))], capsys)
    assert expected in err


def test_offline_hub_id_not_in_the_cache(tmp_path: Path, capsys, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    err = _one_line_error(["validate", str(_recipe(tmp_path, "org/name"))], capsys)
    assert (
        "model.source: 'org/name' is not in the local cache and HF_HUB_OFFLINE=1 is set; "
        "download it once online, or point to a local folder" in err
    )


def test_offline_hub_id_in_the_cache_validates(tmp_path: Path, monkeypatch, tiny_model_dir: Path) -> None:
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert check_source("org/tiny", tmp_path) == "org/tiny"


@pytest.mark.parametrize("source", ["org/na me", "a--b/c", "-org/name", "org/name/extra/more"])
def test_malformed_hub_ids(source: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    err = _one_line_error(["validate", str(_recipe(tmp_path, source))], capsys)
    assert "model.source: " in err


def test_validate_reads_no_weights_and_train_says_they_are_corrupt(
    tmp_path: Path, capsys, tiny_model_dir: Path
) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    recipe = _recipe(tmp_path, str(folder))
    started = time.perf_counter()
    assert main(["validate", str(recipe)]) == 0, capsys.readouterr().err
    assert time.perf_counter() - started < 1.0, "validate must not read weights"
    capsys.readouterr()
    err = _one_line_error(["train", str(recipe)], capsys)
    assert f"model.source '{folder}': cannot load it: " in err and "corrupt" in err
    assert not (tmp_path / "run" / "adapter").exists()
