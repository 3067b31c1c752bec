"""Merging: exact in fp32, into dequant(quant(W)) for quantized training, never into quantized weights."""

from __future__ import annotations

import json

import pytest
import torch

from ftkit.cli import main
from ftkit.export.merge import MergeError, merge, refuse_quantized
from ftkit.runs import RunDir


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def test_merged_folder_loads_without_ftkit_and_matches_the_adapter(
    trained_run, tiny_model_dir, tmp_path, capsys
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = trained_run("plain", train={"max_steps": 3})
    out = tmp_path / "merged"
    assert main(["merge", str(run), "--out", str(out), "--dtype", "fp32"]) == 0
    assert "merge exactness" in capsys.readouterr().out
    verification = json.loads((out / "merge_verification.json").read_text())
    assert verification["merge_exactness"]["max_abs_logit_diff"] < 1e-4
    assert verification["saved"]["generations_equal"] == verification["saved"]["generations"]

    # plain transformers and plain peft, no ftkit code involved
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), RunDir(run).adapter
    )
    ids = AutoTokenizer.from_pretrained(out)("The service was quick and friendly.")["input_ids"]
    diff = (_logits(merged, ids) - _logits(adapter, ids)).abs().max()
    assert diff < 1e-4
    with adapter.disable_adapter():
        assert (_logits(merged, ids) - _logits(adapter, ids)).abs().max() > 1e-3  # the merge did change the model
    assert not any(p.suffix == ".bin" for p in out.iterdir())
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (out / "tokenizer_config.json").read_text()


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_adapter_merges_into_dequantized_weights(trained_run, tmp_path, quantization: str) -> None:
    run = trained_run("qlora", model={"quantization": quantization}, train={"max_steps": 3})
    dequantized = merge(run, tmp_path / "dequantized", dtype="fp32", base_policy="dequantized", count=4)
    original = merge(run, tmp_path / "original", dtype="fp32", base_policy="original", count=4)
    assert dequantized.dequantized_weights == 14  # 2 layers x (q, k, v, o, gate, up, down)
    assert original.dequantized_weights == 0
    assert dequantized.merge_exactness.max_abs_logit_diff < 1e-4
    # merged into the weights training saw, the model is closer to the evaluated adapter than merged
    # into the original weights (off by the weights' quantization error). LLM.int8() also quantizes
    # activations in its forward, which no merged model reproduces: a smaller margin there.
    margin = 5 if quantization == "4bit" else 1
    assert dequantized.quantization_gap is not None and original.quantization_gap is not None
    assert dequantized.quantization_gap.mean_abs_logit_diff * margin < original.quantization_gap.mean_abs_logit_diff


def test_merging_into_quantized_weights_is_refused(tiny_model_dir) -> None:
    from peft import get_peft_model

    from ftkit.models import load_model
    from ftkit.recipe import AdapterConfig, ModelConfig
    from ftkit.training.adapters import lora_config

    model = load_model(ModelConfig(source=str(tiny_model_dir), quantization="4bit")).model
    with pytest.raises(MergeError, match="refusing to merge"):
        refuse_quantized(get_peft_model(model, lora_config(AdapterConfig(r=4))))


def test_existing_output_is_kept_unless_overwrite(trained_run, tmp_path, capsys) -> None:
    run = trained_run("keep", train={"max_steps": 2})
    out = tmp_path / "exists"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    assert main(["merge", str(run), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "mine"
    assert main(["merge", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_combined_adapter_is_evaluated_like_any_other(trained_run, tmp_path, capsys) -> None:
    a, b = trained_run("a", train={"max_steps": 3, "seed": 1}), trained_run("b", train={"max_steps": 3, "seed": 2})
    out = tmp_path / "ab"
    assert (
        main(["merge", "--adapters", str(a), str(b), "--weights", "0.5", "0.5", "--method", "ties", "--out", str(out)])
        == 0
    )
    lineage = json.loads((out / "manifest.json").read_text())["lineage"]
    assert [i["weight"] for i in lineage["combined"]["inputs"]] == [0.5, 0.5]
    recipe = a.parent.parent / "a.yaml"
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                str(recipe),
                "--adapter",
                str(out),
                "--adapter",
                str(RunDir(a).adapter),
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    systems = json.loads((tmp_path / "ev" / "metrics.json").read_text())["systems"]
    assert set(systems) == {"base", "ab", "a"}
    assert main(["merge", "--adapters", str(a), "--weights", "1", "--out", str(tmp_path / "one")]) == 2
