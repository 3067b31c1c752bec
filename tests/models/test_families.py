"""The family matrix: every family through validate, data, train (4-bit, 8-bit, none), eval, merge,
chat rendering and export, on tiny models with the family's real config class, tokenizer kind and
published chat template. What a family cannot do is refused before any weight loads, in one line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ftkit.cli import main
from ftkit.data.encoding import FINAL_TURN_ONLY, IGNORE_INDEX, SYSTEM_FOLDED, Encoded
from ftkit.errors import RowError
from ftkit.models import load_tokenizer
from ftkit.recipe import ModelConfig
from ftkit.runs import RunDir
from ftkit.tasks import get_task
from ftkit.tasks.chat import ChatOptions
from ftkit.tasks.sentiment import SentimentOptions
from tests.models.conftest import data_files, shared_quantization
from tests.models.families import BY_NAME, FAMILIES, TEMPLATES, Family, rows, sidecar

CHAT = [f.name for f in FAMILIES if f.chat]
BASE = [f.name for f in FAMILIES if not f.chat]
ALL = [f.name for f in FAMILIES]
# What each template writes into an assistant turn before the reply itself, in the final turn.
REPLY_PREFIX = {"qwen3": "<think>\n\n</think>\n\n"}


def trained_runs(encoded: Encoded) -> list[list[int]]:
    """The runs of consecutive loss-carrying tokens, in order (one per trained assistant turn)."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(encoded.input_ids, encoded.labels):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(token)
        previous = label
    return runs


def squeeze(text: str) -> str:
    return " ".join(text.split())


def tokenizer_of(folder: Path):
    return load_tokenizer(str(folder), ModelConfig(source=str(folder)))


def test_templates_are_the_published_ones() -> None:
    for family in FAMILIES:
        if family.chat:
            data = (TEMPLATES / str(family.template)).read_bytes()
            assert hashlib.sha256(data).hexdigest() == sidecar(family)["sha256"], family.template


@pytest.mark.parametrize("name", ALL)
def test_validate(name: str, family_recipe: Callable[..., Path]) -> None:
    assert main(["validate", str(family_recipe(name))]) == 0


@pytest.mark.parametrize("name", CHAT)
def test_data_trains_exactly_each_reply_and_its_end_of_turn(name: str, family_dir: Callable[[str], Path]) -> None:
    """Single- and multi-turn conversations (with a system turn): the trained tokens, decoded, are each
    assistant reply followed by the family's end-of-turn token, and nothing else."""
    family = BY_NAME[name]
    tokenizer = tokenizer_of(family_dir(name))
    end = sidecar(family)["special_tokens"]["end_of_turn"]
    chat = get_task(ChatOptions(name="chat"), max_length=2048)
    conversations = [r["messages"] for r in rows("customer_service", "train", 12)]
    single = [c for c in conversations if len(c) == 3][:1]
    multi = [c for c in conversations if len(c) >= 5][:2]
    assert single and multi
    for messages in single + multi:
        encoded = chat.encode(chat.make_example({"messages": messages}, "f:row"), tokenizer)
        replies = [t["content"] for t in messages if t["role"] == "assistant"]
        rewrites = FINAL_TURN_ONLY in encoded.notes
        expected = [*(replies[-1:] if rewrites else replies)]
        expected = [r + end for r in expected[:-1]] + [REPLY_PREFIX.get(name, "") + expected[-1] + end]
        decoded = [tokenizer.decode(run) for run in trained_runs(encoded)]
        assert [squeeze(d) for d in decoded] == [squeeze(e) for e in expected]
        assert (SYSTEM_FOLDED in encoded.notes) == (name == "gemma2")
        assert rewrites == (len(replies) > 1 and name == "qwen3"), encoded.notes


@pytest.mark.parametrize("name", ALL)
def test_data_completion_is_trained_with_eos(name: str, family_dir: Callable[[str], Path]) -> None:
    tokenizer = tokenizer_of(family_dir(name))
    sentiment = get_task(SentimentOptions(name="sentiment"), max_length=256)
    sentiment.observe([sentiment.make_example(r, "f") for r in rows("sentiment", "train", 16)])
    example = sentiment.make_example(rows("sentiment", "train", 1)[0], "f:row 1")
    encoded = sentiment.encode(example, tokenizer)
    (run,) = trained_runs(encoded)
    assert run == tokenizer(example.completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer.pad_token_id not in (None, tokenizer.eos_token_id)
    if BY_NAME[name].adds_bos:
        assert encoded.input_ids[0] == tokenizer.bos_token_id


@pytest.mark.parametrize("name", CHAT)
def test_ftkit_data_reports_the_template_adaptations(name: str, family_recipe, capsys, caplog, monkeypatch) -> None:
    """What rendering adapted is in the pre-flight report (with how many examples) and said once on stderr."""
    from ftkit.data import encoding

    monkeypatch.setattr(encoding, "_said", set())
    assert main(["data", str(family_recipe(name))]) == 0
    out = capsys.readouterr().out
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("note: ")]
    folds, rewrites = name == "gemma2", name == "qwen3"
    assert (SYSTEM_FOLDED in out, FINAL_TURN_ONLY in out) == (folds, rewrites)
    assert logged == [f"note: {note}" for note, shown in ((SYSTEM_FOLDED, folds), (FINAL_TURN_ONLY, rewrites)) if shown]


@pytest.mark.parametrize("name", BASE)
def test_chat_on_a_base_model_is_refused_before_weights_load(name: str, family_recipe, tmp_path, capsys) -> None:
    recipe = family_recipe(name, task={"name": "chat"}, data=data_files(BY_NAME["llama3"], tmp_path))
    assert main(["data", str(recipe)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "no chat template" in line and "task sentiment or qa" in line


def test_mistral_v03_system_turn_is_refused_and_plain_turns_all_train(family_dir: Callable[[str], Path]) -> None:
    """Mistral v0.3's template puts the system text into the last user turn only while that turn is the
    last message, so a finished conversation renders without it: training could not match serving."""
    tokenizer = tokenizer_of(family_dir("mistral"))
    tokenizer.chat_template = (TEMPLATES / "mistral-7b-instruct-v0.3.jinja").read_text(encoding="utf-8")
    chat = get_task(ChatOptions(name="chat"), max_length=2048)
    messages = next(r["messages"] for r in rows("customer_service", "train", 12) if len(r["messages"]) >= 5)
    with pytest.raises(RowError, match="remove the system turn"):
        chat.encode(chat.make_example({"messages": messages}, "f:row"), tokenizer)
    encoded = chat.encode(chat.make_example({"messages": messages[1:]}, "f:row"), tokenizer)
    replies = [t["content"] + "</s>" for t in messages if t["role"] == "assistant"]
    assert [squeeze(tokenizer.decode(run)) for run in trained_runs(encoded)] == [squeeze(r) for r in replies]


@pytest.mark.parametrize("quantization", ["4bit", "8bit", "none"])
@pytest.mark.parametrize("name", ALL)
def test_train(name: str, quantization: str, family_recipe, family_run, capsys) -> None:
    """Two steps in each precision; LoRA moved (training refuses to finish otherwise). The 4-bit run
    (GPT-2: none) is the one the eval, merge, export and chat tests share."""
    family = BY_NAME[name]
    if family.model_type == "gpt2" and quantization != "none":
        capsys.readouterr()
        assert main(["train", str(family_recipe(name, quantization)), "--no-eval"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "Conv1D" in line and "model.quantization: none" in line
        return
    if quantization == shared_quantization(family):
        run = family_run(name)
    else:
        recipe = family_recipe(name, quantization)
        assert main(["train", str(recipe), "--no-eval"]) == 0
        run = recipe.parent / "run"
    assert (RunDir(run).adapter / "adapter_config.json").is_file()


@pytest.mark.parametrize("name", ALL)
def test_eval(name: str, family_run) -> None:
    metrics = json.loads(RunDir(family_run(name)).metrics.read_text())
    assert metrics["training"]["lora_mean_abs_change"] > 0
    assert len(metrics["systems"]) == 2 and metrics["examples"] >= 3
    for system in metrics["systems"].values():
        assert all(v["value"] == v["value"] for v in system["metrics"].values())  # no NaN


@pytest.mark.parametrize("name", ALL)
def test_export_merged_safetensors_is_verified(name: str, family_run, tmp_path) -> None:
    """`ftkit export --format safetensors` is the verified merge (into dequant(quant(W)) for 4-bit runs)."""
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    assert main(["export", str(family_run(name)), "--format", "safetensors", "--out", str(out), "--dtype", "fp32"]) == 0
    verification = json.loads((out / "merge_verification.json").read_text())
    assert verification["merge_exactness"]["max_abs_logit_diff"] < 1e-3
    assert verification["saved"]["max_abs_logit_diff"] < 1e-3
    AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)  # plain transformers reads it


@pytest.mark.parametrize("name", ALL)
def test_export_adapter_package(name: str, family_run, tmp_path) -> None:
    out = tmp_path / "package"
    assert main(["export", str(family_run(name)), "--format", "adapter", "--out", str(out)]) == 0
    assert (out / "adapter_config.json").is_file()


@pytest.mark.parametrize("name", CHAT)
def test_chat_and_serve_render_the_prompt_the_model_was_trained_on(name: str, family_run) -> None:
    """The served prompt for a held-out conversation is the context the final reply was trained after,
    and a reply stops on the family's end of turn (the template's, whatever the generation config says)."""
    from ftkit.data.encoding import end_of_turn_id
    from ftkit.recipe import load_recipe
    from ftkit.serving import runtime
    from ftkit.serving.batcher import Sampling, eos_ids
    from ftkit.serving.targets import resolve_targets

    run = family_run(name)
    targets, base = resolve_targets([run])
    deployment = runtime.load(targets, base)
    tokenizer = deployment.tokenizer
    recipe = load_recipe(RunDir(run).recipe)
    chat = get_task(recipe.task, recipe.data.max_length)
    messages = rows("customer_service", "test", 1)[0]["messages"]
    example = chat.make_example({"messages": messages}, "test:row 1")
    assert runtime.prompt_ids(tokenizer, messages[:-1]) == chat.probe(example, tokenizer).prompt
    assert end_of_turn_id(tokenizer) in eos_ids(deployment.model, tokenizer)
    stream = deployment.reply(targets[0].name, runtime.prompt_ids(tokenizer, messages[:-1]), Sampling(4))
    "".join(stream)
    assert stream.reply.completion_tokens >= 1


@pytest.mark.parametrize("name", BASE)
def test_chat_with_a_base_model_is_refused(name: str, family_run, capsys) -> None:
    run = family_run(name)
    capsys.readouterr()
    assert main(["chat", str(run)]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ftkit: error")]
    assert "no chat template" in line


def test_families_cover_the_issue() -> None:
    kinds = {f.model_type for f in FAMILIES}
    assert {"llama", "qwen2", "qwen3", "mistral", "gemma2", "phi3", "gpt2", "gpt_neox"} <= kinds
    assert all(isinstance(f, Family) for f in FAMILIES)
