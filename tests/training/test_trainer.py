"""Training through the real CLI on a tiny Llama: run directory, guards, resume, accumulation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ftkit.cli import main
from ftkit.data.prepared import prepare
from ftkit.recipe import load_recipe
from ftkit.runs import RunDir
from ftkit.training.trainer import Collator, train


def _adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def _with_index_labels(source: Path, tmp_path: Path) -> Path:
    """The rows of `source` with labels as indices (0 = negative), so any label words can be used."""
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    out = tmp_path / "indexed.jsonl"
    out.write_text(
        "".join(json.dumps({"text": r["text"], "label": int(r["label"] == "positive")}) + "\n" for r in rows)
    )
    return out


@pytest.mark.parametrize("quantization", ["none", "4bit", "8bit"])
def test_train_writes_a_complete_run(write_recipe, quantization: str, capsys) -> None:
    recipe_path = write_recipe(f"run-{quantization}", model={"quantization": quantization})
    assert main(["train", str(recipe_path)]) == 0
    run = RunDir(load_recipe(recipe_path).run_dir)
    assert (run.adapter / "adapter_config.json").is_file()
    assert (run.adapter / "adapter_model.safetensors").is_file()
    assert {p.suffix for p in run.adapter.iterdir()} <= {".safetensors", ".json", ".jinja", ".md"}, "safetensors only"
    weights = _adapter_weights(run.adapter)
    assert any("lora_B" in k for k in weights) and all(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)
    log = [json.loads(line) for line in run.train_log.read_text().splitlines()]
    assert [row["step"] for row in log if "loss" in row][:4] == [1, 2, 3, 4]
    assert all(row["tokens_per_s"] >= 0 for row in log)
    metrics = json.loads(run.metrics.read_text())
    assert metrics["schema"] == "ftkit.metrics/1"
    assert set(metrics["systems"]) == {"base", "adapter"}
    for system in metrics["systems"].values():
        for value in system["metrics"].values():
            assert value["ci_low"] <= value["value"] <= value["ci_high"]
    assert {c["metric"] for c in metrics["comparisons"]} == {"accuracy", "macro_f1"}
    assert len(run.predictions.read_text().splitlines()) == 12
    assert "## Is the adapter better?" in run.report.read_text()
    assert load_recipe(run.recipe).model_dump() == load_recipe(recipe_path).model_dump()
    out = capsys.readouterr().out
    assert "accuracy" in out and "tokens/s" in out and "peak memory" in out


def test_gradient_checkpointing_still_trains(write_recipe) -> None:
    """LoRA + checkpointing on a frozen base: input grads must be enabled or nothing trains."""
    recipe = load_recipe(write_recipe("gc", train={"gradient_checkpointing": True, "max_steps": 2}))
    run = RunDir(recipe.run_dir)
    run.path.mkdir(parents=True)
    result = train(recipe, run, prepare(recipe))
    assert result.lora_change is not None and result.lora_change > 0
    assert all(w.abs().sum() > 0 for k, w in _adapter_weights(run.adapter).items() if "lora_B" in k)


def test_gradient_accumulation_matches_one_big_batch(write_recipe, sentiment_files, tmp_path) -> None:
    """Batch 4 x 1 and batch 2 x 2 accumulation take the same optimizer step.

    Three short labels and one long one: however the 4 rows are split into two micro-batches,
    the micro-batches carry different numbers of trained tokens, so normalising the loss per
    micro-batch (the classic accumulation bug) would weight tokens differently and change the step.
    """
    texts = [json.loads(line)["text"] for line in sentiment_files["train"].read_text().splitlines()[:4]]
    data = tmp_path / "four.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": int(i == 3)}) + "\n" for i, t in enumerate(texts)))
    task = {"labels": ["bad", "wonderfully, remarkably and memorably good"]}
    common = {"max_steps": 1, "learning_rate": 1e-3, "group_by_length": False, "warmup_ratio": 0.0}
    results = []
    for name, batch, accum in (("big", 4, 1), ("accum", 2, 2)):
        train_cfg = common | {"batch_size": batch, "grad_accum": accum}
        files = {"train": str(data), "validation": None, "test": str(data), "allow_overlap": True}
        recipe = load_recipe(write_recipe(name, task=task, data=files, train=train_cfg))
        run = RunDir(recipe.run_dir)
        run.path.mkdir(parents=True)
        train(recipe, run, prepare(recipe))
        results.append(_adapter_weights(run.adapter))
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-4, atol=1e-6)


def test_resume_continues_from_the_last_checkpoint(write_recipe) -> None:
    path = write_recipe("resume", train={"max_steps": 4, "save_every": 2})
    assert main(["train", str(path), "--no-eval"]) == 0
    run = RunDir(load_recipe(path).run_dir)
    finished = _adapter_weights(run.adapter)
    last = run.last_checkpoint()
    assert last is not None and last.name == "checkpoint-4"
    # Pretend the run died after step 2: drop the later checkpoint and resume.
    import shutil

    shutil.rmtree(run.checkpoints / "checkpoint-4")
    assert main(["train", str(path), "--resume", "--no-eval"]) == 0
    resumed = _adapter_weights(run.adapter)
    for key in finished:
        torch.testing.assert_close(finished[key], resumed[key], rtol=1e-4, atol=1e-6)


def test_resume_refuses_a_changed_recipe(write_recipe, capsys) -> None:
    path = write_recipe("changed", train={"max_steps": 2, "save_every": 2})
    assert main(["train", str(path), "--no-eval"]) == 0
    assert main(["train", str(path), "--resume", "adapter.r=8"]) == 2
    assert "differ" in capsys.readouterr().err


def test_completion_longer_than_max_length_names_the_row(write_recipe, sentiment_files, tmp_path, capsys) -> None:
    indexed = str(_with_index_labels(sentiment_files["train"], tmp_path))
    data = {"train": indexed, "validation": None, "test": indexed, "max_length": 16, "allow_overlap": True}
    path = write_recipe("toolong", task={"labels": ["no", "an extremely long label " * 10]}, data=data)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "indexed.jsonl:row 1:" in err and "max_length" in err


def test_collator_pads_with_pad_and_masks_padding() -> None:
    batch = Collator(pad_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_completion_only_lm_head_gives_the_full_sequence_loss(tiny_model_dir, tokenizer, tmp_path) -> None:
    """Projecting only loss-carrying positions onto the vocabulary changes the cost, not the loss."""
    from transformers import AutoModelForCausalLM, TrainingArguments

    from ftkit.data.encoding import encode_prompt_completion
    from ftkit.training.trainer import CompletionLossTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rows = [
        encode_prompt_completion(tokenizer, p, c, 64)
        for p, c in [
            ("Review: fine\nSentiment:", " positive"),
            ("Review: a much longer text about a kettle\nSentiment:", " very negative"),
        ]
    ]
    batch = Collator(tokenizer.pad_token_id)([{"input_ids": r.input_ids, "labels": r.labels} for r in rows])
    trainer = CompletionLossTrainer(
        model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    )
    with torch.no_grad():
        fast, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
        full = model(**batch).loss
    assert outputs.logits.shape[1] < batch["input_ids"].shape[1] // 2, "only a few positions reach the LM head"
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
