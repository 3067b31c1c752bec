"""Exports: a plain-peft adapter package with a model card, GGUF verified through transformers, Ollama templates."""

from __future__ import annotations

import json
import os

import pytest
import torch

from ftkit.cli import main
from ftkit.export import ExportError
from ftkit.export.ollama import RoleTemplate, infer_role_template
from ftkit.runs import RunDir


def test_adapter_package_loads_with_plain_peft_and_has_a_model_card(trained_run, tiny_model_dir, tmp_path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = trained_run("card", evaluate=True)
    out = tmp_path / "package"
    assert main(["export", str(run), "--format", "adapter", "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    accuracy = metrics["systems"]["adapter"]["metrics"]["accuracy"]
    assert f"{accuracy['value']:.3f} [{accuracy['ci_low']:.3f}, {accuracy['ci_high']:.3f}]" in card
    assert "PeftModel.from_pretrained" in card and "--max-lora-rank 8" in card
    assert (out / "recipe.yaml").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # staged folders and atomic writes are not left 0700/0600
    assert (out / "README.md").stat().st_mode & 0o777 == 0o666 & ~umask

    ids = torch.tensor([[1, 420, 3050, 77, 9]])
    packaged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    original = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), RunDir(run).adapter)
    with torch.no_grad():
        assert torch.equal(packaged(ids).logits, original(ids).logits)
    lineage = json.loads((out / "manifest.json").read_text())["lineage"]
    assert lineage["eval"]["primary_metric"] == "accuracy" and len(lineage["data_sha256"]) == 64


def test_gguf_export_is_checked_by_llama_cpp_and_scored_on_the_held_out_split(trained_run, tmp_path, capsys) -> None:
    """The f32 file: llama.cpp's tokenization, logits and greedy continuations are the merged model's, and the
    run's held-out accuracy through llama.cpp is written beside the adapter's (same examples, same scoring)."""
    from transformers import AutoModelForCausalLM

    run = trained_run("gguf", evaluate=True, train={"max_steps": 2})
    out = tmp_path / "gguf"
    assert main(["export", str(run), "--format", "ollama", "--out", str(out), "--dtype", "f32"]) == 0
    check = json.loads((out / "gguf_verification.json").read_text())
    assert check["judge"].startswith("llama.cpp") and check["tokenizer_texts"] > 0
    assert check["max_abs_logit_diff"] < 1e-3 and check["next_token_agreement"] == 1.0
    assert check["generations_equal"] == check["generations"] > 0
    evaluation = json.loads((out / "gguf_evaluation.json").read_text())
    metrics = json.loads((RunDir(run).metrics).read_text())
    accuracy = evaluation["metrics"]["accuracy"]
    assert accuracy["adapter"] == metrics["systems"]["adapter"]["metrics"]["accuracy"]["value"]
    assert evaluation["examples"] == metrics["examples"] and abs(accuracy["gguf"] - accuracy["adapter"]) <= 1e-9
    shown = capsys.readouterr().out
    assert "checked by llama.cpp" in shown and "held-out test accuracy through llama.cpp" in shown
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file="gguf.gguf", dtype=torch.float32)
    assert model.config.num_hidden_layers == 2  # transformers reads the file too
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./gguf.gguf\n") and "{{ range .Messages }}" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile


def test_k_quants_come_from_llama_cpp_quantizer(trained_run, tmp_path, capsys) -> None:
    """Q4_K_M is written by llama.cpp's own quantizer (the gguf package cannot), then checked like any file;
    a type GGUF export does not write is refused in one line."""
    import gguf

    run, out = trained_run("q4km"), tmp_path / "q4km"
    assert main(["export", str(run), "--format", "gguf", "--out", str(out), "--dtype", "q4_k_m"]) == 0
    reader = gguf.GGUFReader(out / "q4km.gguf")
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    # rows of 64 do not fill a k-quant super-block of 256: llama.cpp falls back to Q5_0 / Q8_0 for them
    assert {t.tensor_type.name for t in reader.tensors} <= {"F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"}
    assert json.loads((out / "gguf_verification.json").read_text())["dtype"] == "q4_k_m"
    capsys.readouterr()
    assert main(["export", str(run), "--format", "gguf", "--out", str(tmp_path / "x"), "--dtype", "bf16"]) == 2
    assert "writes f32, f16, q8_0, q4_0, q4_k_m" in capsys.readouterr().err


def test_ollama_template_translation_reproduces_the_chat_template(tokenizer) -> None:
    template = infer_role_template(tokenizer)
    assert template.prefix["user"] == "<|im_start|>user\n" and template.suffix["user"] == "<|im_end|>\n"
    assert template.generation == "<|im_start|>assistant\n"
    assert template.default_system and "SmolLM" in template.default_system  # SmolLM2 adds one when none is given
    conversation = [
        {"role": "user", "content": "Is my parcel late?"},
        {"role": "assistant", "content": "No."},
        {"role": "user", "content": "Sure?"},
    ]
    assert template.render(conversation) == tokenizer.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=True
    )


def test_a_template_that_is_not_per_message_is_refused(tokenizer) -> None:
    from copy import deepcopy

    odd = deepcopy(tokenizer)
    # numbers each turn: no fixed per-role prefix can express that
    odd.chat_template = "{% for m in messages %}[{{ loop.index }}] {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ExportError, match="template"):
        infer_role_template(odd)


def test_go_template_is_one_branch_per_role() -> None:
    template = RoleTemplate(
        {"system": "S:", "user": "U:", "assistant": "A:"}, {"system": "\n", "user": "\n", "assistant": "\n"}, "A:", None
    )
    assert template.go_template() == (
        '{{ range .Messages }}{{ if eq .Role "system" }}S:{{ .Content }}\n'
        '{{ else if eq .Role "user" }}U:{{ .Content }}\n'
        '{{ else if eq .Role "assistant" }}A:{{ .Content }}\n{{ end }}{{ end }}A:'
    )
