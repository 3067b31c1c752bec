"""Experiment tracking, read back from each tracker: a real MLflow server (SQLite backend, local artifact root,
loopback port, started and stopped here) through `MlflowClient`; TensorBoard's event files through
tensorboard's own reader; the W&B offline run folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ftkit.cli import main
from ftkit.recipe import load_recipe
from ftkit.runs import RunDir


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """`mlflow server` on a loopback port with a SQLite store and a local artifact root; stopped afterwards."""
    port, store = _free_port(), tmp_path / "mlflow-server"
    store.mkdir()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--default-artifact-root", str(store)]
    log = (tmp_path / "mlflow-server.log").open("wb")  # a file, not a pipe: a full pipe would block the server
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner (huey) to start
    server = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # measured: 75 s to answer on 2 loaded cores
    try:
        while True:
            assert server.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not answer /health within 300 s"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=120)
        log.close()


def wandb_records(run_file: Path) -> tuple[dict[str, object], list[dict[str, object]]]:
    """The summary and the history rows an offline W&B run recorded, read from its `run-<id>.wandb` file with
    wandb's own protobuf `Record`. wandb 0.31 ships no Python reader for the file, so the container is
    unpacked here: LevelDB's log format (32 KiB blocks; each chunk: crc32, length, kind 1 full / 2 first /
    3 middle / 4 last) after W&B's 7-byte header."""
    from wandb.proto.wandb_internal_pb2 import Record  # type: ignore[attr-defined]

    data, position, payload = run_file.read_bytes(), 7, b""
    summary: dict[str, object] = {}
    history: list[dict[str, object]] = []
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a chunk header is padding
            position += 32768 - position % 32768
            continue
        length, kind = struct.unpack_from("<HB", data, position + 4)
        payload += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(payload)
            kind_of = record.WhichOneof("record_type")
            if kind_of == "summary":
                summary |= {item.key: json.loads(item.value_json) for item in record.summary.update}
            elif kind_of == "history":
                history.append(
                    {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                )
            payload = b""
    return summary, history


def _log(run: RunDir) -> list[dict]:
    return [json.loads(line) for line in run.train_log.read_text().splitlines()]


def test_training_and_evaluation_log_to_mlflow_tensorboard_and_wandb(write_recipe, mlflow_server, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is ftkit's default: no account, nothing sent
    train = {"max_steps": 4, "eval_every": 2, "report_to": ["mlflow", "tensorboard", "wandb"]}
    path = write_recipe("tracked", train=train)
    assert main(["train", str(path)]) == 0
    run = RunDir(load_recipe(path).run_dir)
    ids = json.loads(run.tracking.read_text())
    metrics = json.loads(run.metrics.read_text())
    validation = {row["step"]: row["eval_accuracy"] for row in _log(run) if "eval_accuracy" in row}
    losses = {row["step"]: row["loss"] for row in _log(run) if "loss" in row}
    adapter = metrics["systems"]["adapter"]["metrics"]["accuracy"]
    [comparison] = [c for c in metrics["comparisons"] if c["metric"] == "accuracy"]

    # MLflow, read back from the server.
    client = MlflowClient(mlflow_server)
    run_id = ids["mlflow"]["run_id"]
    logged = client.get_run(run_id).data
    assert logged.params["train.learning_rate"] == "0.01" and logged.params["task.name"] == "sentiment"
    assert logged.params["train.report_to"] == "['mlflow', 'tensorboard', 'wandb']"
    assert {m.step: m.value for m in client.get_metric_history(run_id, "loss")} == pytest.approx(losses)
    assert {m.step: m.value for m in client.get_metric_history(run_id, "eval_accuracy")} == validation
    assert logged.metrics["test.adapter.accuracy"] == adapter["value"]
    assert (logged.metrics["test.adapter.accuracy.ci_low"], logged.metrics["test.adapter.accuracy.ci_high"]) == (
        adapter["ci_low"],
        adapter["ci_high"],
    )
    assert logged.metrics["test.adapter_vs_base.accuracy.p_value"] == comparison["p_value"]
    assert logged.metrics["ftkit.tokens_per_s"] > 0 and logged.metrics["ftkit.peak_rss_mb"] > 0
    manifest = json.loads((run.adapter / "manifest.json").read_text())["lineage"]
    assert logged.tags["ftkit.base_fingerprint"] == manifest["base_model"]["fingerprint"]
    assert logged.tags["ftkit.data_sha256"] == manifest["data_sha256"]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.md", "metrics.json", "loss_curves.png", "adapter"} <= artifacts
    assert {"adapter/adapter_model.safetensors", "adapter/manifest.json"} <= {
        a.path for a in client.list_artifacts(run_id, "adapter")
    }

    # TensorBoard, read with its own reader: the same scalars.
    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "eval/accuracy", "eval/loss", "test/adapter/accuracy"} <= scalars
    assert {e.step: e.value for e in events.Scalars("eval/accuracy")} == pytest.approx(validation)
    assert events.Scalars("test/adapter/accuracy")[-1].value == pytest.approx(adapter["value"])

    # W&B offline: the run folder with its summary.
    [offline] = list((run.path / "wandb").glob("offline-run-*"))
    summary, history = wandb_records(next(offline.glob("run-*.wandb")))
    assert summary["test.adapter.accuracy"] == adapter["value"]
    logged_validation = {row["train/global_step"]: row["eval/accuracy"] for row in history if "eval/accuracy" in row}
    assert logged_validation == validation, "the Trainer's callback logged the validation metric there"
    assert (offline / "files" / "report.md").is_file()

    # ftkit eval and ftkit compare log to the same MLflow run.
    assert main(["eval", str(path), "--adapter", str(run.adapter), "--report-to", "mlflow"]) == 0
    assert main(["compare", str(run.path), "--report-to", "mlflow"]) == 0
    after = client.get_run(run_id).data.metrics
    assert after["eval.test.tracked.accuracy"] == adapter["value"], "ftkit eval names the system by its run"
    assert "compare.txt" in {a.path for a in client.list_artifacts(run_id)}
    assert "eval" in {a.path for a in client.list_artifacts(run_id)}


def test_tracker_problems_are_one_line(write_recipe, capsys, tmp_path) -> None:
    assert main(["train", str(write_recipe("unknown", train={"report_to": ["tensorbord"]}))]) == 2
    assert "train.report_to: unknown tracker 'tensorbord'" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "unknown").exists(), "refused before the run directory is created"
    trained = write_recipe("untracked", train={"max_steps": 2})
    assert main(["train", str(trained), "--no-eval"]) == 0
    assert main(["compare", str(tmp_path / "runs" / "untracked"), "--report-to", "mlflow"]) == 2
    assert "has no tracking.json" in capsys.readouterr().err
