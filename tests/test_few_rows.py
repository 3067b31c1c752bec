"""Inference matmuls of a few rows as `W @ x.T`: F.linear's values, training untouched, greedy answers unchanged."""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch

from ftkit import dequantized, few_rows
from ftkit.models import load_model
from ftkit.recipe import ModelConfig


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("leading", [(), (1,), (3,)])
def test_linear_is_f_linear_for_every_row_count(bias: bool, leading: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    weight, b = torch.randn(48, 40), torch.randn(48) if bias else None
    for rows in [*range(1, 21), few_rows.FEW_ROWS, few_rows.FEW_ROWS + 1]:
        x = torch.randn(*leading, rows, 40)
        expected = torch.nn.functional.linear(x, weight, b)
        got = few_rows.linear(x, weight, b)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        if not 1 < x.numel() // 40 <= few_rows.FEW_ROWS:  # outside a decode step's rows it is F.linear itself
            assert torch.equal(got, expected)


def test_install_takes_plain_float32_linears_in_eval_mode_only() -> None:
    torch.manual_seed(0)
    plain, narrow = torch.nn.Linear(32, 16), torch.nn.Linear(32, 16).to(torch.bfloat16)
    quantized = bnb.nn.Linear4bit(32, 16, compute_dtype=torch.float32)
    model = torch.nn.ModuleList([plain, narrow, quantized])
    assert few_rows.install(model) == 1
    assert "forward" in vars(plain) and "forward" not in vars(narrow) and "forward" not in vars(quantized)
    x = torch.randn(4, 32)
    with torch.no_grad():
        model.eval()
        assert torch.equal(plain(x), torch.mm(plain.weight, x.T).T + plain.bias)  # the few-row form is what ran
        model.train()
        assert torch.equal(plain(x), torch.nn.functional.linear(x, plain.weight, plain.bias))


def test_a_loaded_model_decodes_few_rows_so_and_batched_greedy_answers_stay_one_at_a_time(
    tiny_model_dir: Path, tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ftkit.evaluation.inference import generate_greedy

    cfg = ModelConfig(source=str(tiny_model_dir), quantization="4bit", compute_dtype="float32", dequantized_base=True)
    model = load_model(cfg).model.eval()
    assert "forward" in vars(model.get_output_embeddings())
    layers = list(dequantized.four_bit_layers(model))
    assert layers and all(isinstance(layer.forward, dequantized._DequantizedForward) for layer in layers)
    prompts = [
        tokenizer(text)["input_ids"]
        for text in ("Q: hi\nA:", "Question: which parcel carrier delivers on Sundays?\nAnswer:", "x", "Tell me")
    ]
    taken: list[int] = []
    mm = torch.mm

    def counted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        taken.append(b.shape[1])
        return mm(a, b)

    with monkeypatch.context() as patched:  # a spy on the real op: the batched decode steps went this way
        patched.setattr(torch, "mm", counted)
        batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=10)
    alone = [generate_greedy(model, tokenizer, [prompt], max_new_tokens=10)[0] for prompt in prompts]
    assert batched == alone and all(batched)
    assert len(prompts) in taken and max(taken) <= few_rows.FEW_ROWS
