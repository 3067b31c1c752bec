"""Training speed paths give the loss of the plain path: length-grouped padded batches, batches split
into chunks to bound memory, and the bf16 compute dtype chosen on CPUs that multiply bf16 natively."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ftkit.data.encoding import IGNORE_INDEX, encode_prompt_completion
from ftkit.data.prepared import prepare
from ftkit.recipe import load_recipe
from ftkit.runs import RunDir
from ftkit.training.trainer import Collator, CompletionLossTrainer, batch_token_budget, split_batch, train

REVIEWS = [
    "ok",
    "The kettle boils fast and the handle stays cool, which I did not expect at this price.",
    "Broke after a week.",
    "Lovely colour, soft fabric, and it survived ten washes without shrinking or fading at all, "
    "which is more than I can say for the last three hoodies I bought from other shops.",
    "Meh.",
]


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def rows(tokenizer):
    """Examples of very different lengths, as the trainer receives them."""
    encoded = [
        encode_prompt_completion(tokenizer, f"Review: {text}\nSentiment:", label, 96)
        for text, label in zip(REVIEWS, [" positive", " positive", " negative", " very positive", " negative"])
    ]
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]


def per_example_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean loss over each row's trained tokens, from full logits (the plain path)."""
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    targets = batch["labels"][:, 1:]
    token_loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return token_loss.sum(dim=1) / (targets != IGNORE_INDEX).sum(dim=1)


def test_padded_batch_gives_each_example_its_one_at_a_time_loss(tiny_model, tokenizer, rows) -> None:
    """Right padding with the attention mask: no example sees another's tokens or the padding."""
    collate = Collator(tokenizer.pad_token_id)
    batch = collate(rows)
    assert batch["input_ids"].shape[1] > 3 * min(len(r["input_ids"]) for r in rows), "the batch really is padded"
    together = per_example_loss(tiny_model, batch)
    alone = torch.cat([per_example_loss(tiny_model, collate([row])) for row in rows])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_split_batch_chunks_give_the_same_per_example_losses(tiny_model, tokenizer, rows) -> None:
    batch = Collator(tokenizer.pad_token_id)(rows)
    longest = batch["input_ids"].shape[1]
    chunks = split_batch(batch, max_tokens=longest + 10)
    assert len(chunks) > 1 and all(c["input_ids"].numel() <= longest + 10 or len(c["input_ids"]) == 1 for c in chunks)
    assert sum(int(c["attention_mask"].sum()) for c in chunks) == int(batch["attention_mask"].sum()), "no token lost"
    got = torch.cat([per_example_loss(tiny_model, c) for c in chunks])
    lengths = batch["attention_mask"].sum(dim=1)
    want = per_example_loss(tiny_model, batch)[lengths.argsort(descending=True, stable=True)]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _lora_grads(trainer_model, tokenizer, rows, tmp_path, max_batch_tokens: int | None) -> dict[str, torch.Tensor]:
    from transformers import TrainingArguments

    trainer = CompletionLossTrainer(
        model=trainer_model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    )
    trainer.max_batch_tokens = max_batch_tokens
    batch = Collator(tokenizer.pad_token_id)(rows)
    trained = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    trainer_model.zero_grad()
    loss = trainer.training_step(trainer_model, dict(batch), num_items_in_batch=torch.tensor(trained))
    grads = {n: p.grad.clone() for n, p in trainer_model.named_parameters() if p.requires_grad}
    return grads | {"loss": loss.reshape(1)}


def test_split_training_step_takes_the_same_gradient(tiny_model_dir, tokenizer, rows, tmp_path) -> None:
    """Chunked forward/backward of one batch: every LoRA gradient and the reported loss are unchanged."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
    )
    whole = _lora_grads(model, tokenizer, rows, tmp_path, None)
    split = _lora_grads(model, tokenizer, rows, tmp_path, 40)
    assert whole.keys() == split.keys() and len(whole) > 2
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-6)


def test_token_budget_is_batch_size_at_the_90th_percentile_length() -> None:
    from ftkit.data.encoding import Encoded

    rows = [Encoded(input_ids=[1] * n, labels=[1] * n, prompt_truncated=False) for n in [10] * 9 + [100]]
    assert batch_token_budget(rows, 4) == 40  # the one long row does not set the budget


def test_grouped_and_split_training_equals_plain_training(write_recipe, sentiment_files, tmp_path, monkeypatch) -> None:
    """Same examples, same seed: one optimizer step over the whole training set, with length grouping and
    the split of wide batches (what `ftkit train` does) vs random order and no split, moves LoRA identically."""
    lines = sentiment_files["train"].read_text().splitlines()[:12]
    lines[3] = json.dumps({"text": " ".join([json.loads(lines[3])["text"]] * 4), "label": "positive"})  # one long row
    data = tmp_path / "twelve.jsonl"
    data.write_text("\n".join(lines) + "\n")
    files = {"train": str(data), "validation": None, "test": str(data), "allow_overlap": True, "max_length": 192}
    import ftkit.training.trainer

    splits: list[int] = []

    def recording_split(batch: dict[str, torch.Tensor], max_tokens: int) -> list[dict[str, torch.Tensor]]:
        splits.append(max_tokens)
        return split_batch(batch, max_tokens)

    monkeypatch.setattr(ftkit.training.trainer, "split_batch", recording_split)
    adapters = []
    for name, grouped in (("grouped", True), ("plain", False)):
        cfg = {"max_steps": 1, "batch_size": 12, "group_by_length": grouped, "warmup_ratio": 0.0, "learning_rate": 1e-3}
        recipe = load_recipe(write_recipe(name, data=files, train=cfg, adapter={"dropout": 0.0}))
        run = RunDir(recipe.run_dir)
        run.path.mkdir(parents=True)
        if not grouped:
            monkeypatch.setattr(ftkit.training.trainer, "batch_token_budget", lambda rows, size: None)
        result = train(recipe, run, prepare(recipe))
        adapters.append((load_file(run.adapter / "adapter_model.safetensors"), result.train_loss))
    (grouped_w, grouped_loss), (plain_w, plain_loss) = adapters
    assert len(splits) == 1, "the grouped run split its one wide batch; the plain run did not"
    assert grouped_loss == pytest.approx(plain_loss, rel=1e-5)
    for key in grouped_w:
        torch.testing.assert_close(grouped_w[key], plain_w[key], rtol=1e-4, atol=1e-6)


def test_bf16_compute_dtype_trains_to_the_fp32_loss(write_recipe) -> None:
    """The dtype ftkit picks on CPUs with native bf16 learns like fp32: same steps, final loss within 2 %."""
    losses = {}
    for dtype in ("float32", "bfloat16"):
        recipe = load_recipe(
            write_recipe(
                f"dtype-{dtype}",
                model={"compute_dtype": dtype},
                adapter={"dropout": 0.0},
                data={"validation": None},
                train={"max_steps": 6, "learning_rate": 5e-3},
            )
        )
        run = RunDir(recipe.run_dir)
        run.path.mkdir(parents=True)
        result = train(recipe, run, prepare(recipe))
        log = [json.loads(line) for line in run.train_log.read_text().splitlines()]
        losses[dtype] = [row["loss"] for row in log if "loss" in row]
        assert result.lora_change and result.lora_change > 0
    assert losses["float32"][-1] < losses["float32"][0], "the run learns"
    assert losses["bfloat16"][-1] == pytest.approx(losses["float32"][-1], rel=0.02)


@pytest.mark.parametrize("native", [True, False])
def test_auto_compute_dtype_follows_the_cpus_bf16_support(monkeypatch, native: bool) -> None:
    from ftkit import models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: native)
    assert models.compute_dtype("auto") == (torch.bfloat16 if native else torch.float32)
    assert models.compute_dtype("float32") == torch.float32
