"""Ollama Modelfiles from each family's published chat template: translated exactly (the Modelfile's template
renders held-out conversations to the Jinja text, less the BOS llama.cpp adds itself, and stops on the
family's end of turn), or refused with the reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ftkit.export import ExportError
from ftkit.export.ollama import infer_role_template, modelfile
from tests.models.families import rows, sidecar
from tests.models.test_families import tokenizer_of

TRANSLATED = ["llama3", "qwen2.5", "phi3"]
REFUSED = {
    "qwen3": "renders a 4-message test conversation as .*<think>",  # drops <think> from earlier turns only
    "mistral": "writes a system message's text outside its own turn",  # folded into the first [INST]
    "gemma2": "cannot render a system/user/assistant conversation .System role not supported",
}


def conversations() -> list[list[dict[str, str]]]:
    """Held-out customer-service conversations up to their last user turn: system turns, several turns."""
    return [r["messages"][:-1] for r in rows("customer_service", "test", 8)]


@pytest.mark.parametrize("name", TRANSLATED)
def test_modelfile_renders_the_conversations_as_the_chat_template(name: str, family_dir: Callable[[str], Path]) -> None:
    tokenizer = tokenizer_of(family_dir(name))
    template = infer_role_template(tokenizer)
    adds_bos = tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    for messages in conversations():
        jinja = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert template.render(messages) == (jinja.removeprefix(tokenizer.bos_token) if adds_bos else jinja)
    text = modelfile("m.gguf", tokenizer)
    assert f'PARAMETER stop "{sidecar_end_of_turn(name)}"' in text
    assert adds_bos == (name == "llama3")
    assert tokenizer.bos_token is None or tokenizer.bos_token not in text  # llama.cpp adds BOS; never twice


def sidecar_end_of_turn(name: str) -> str:
    from tests.models.families import BY_NAME

    return str(sidecar(BY_NAME[name])["special_tokens"]["end_of_turn"])


def test_a_default_system_prompt_is_written_into_the_template(family_dir: Callable[[str], Path]) -> None:
    """Qwen2.5's template adds its own system prompt when none is given; the Modelfile's template does the same
    itself (Ollama's SYSTEM would not be written for an empty default, as Llama 3.1's is)."""
    text = modelfile("m.gguf", tokenizer_of(family_dir("qwen2.5")))
    assert '{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}<|im_start|>system\nYou are Qwen' in text
    assert "\nSYSTEM " not in text


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_template_that_cannot_be_translated_exactly_is_refused_with_the_reason(
    name: str, family_dir: Callable[[str], Path]
) -> None:
    with pytest.raises(ExportError, match=REFUSED[name]):
        modelfile("m.gguf", tokenizer_of(family_dir(name)))
