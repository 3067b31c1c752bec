"""llama.cpp is the judge: every family's tiny model written as GGUF, loaded by llama.cpp (llama-cpp-python,
installed by `make test`), and compared with transformers on the family's own probe conversations.

For each family and file type `check_gguf` asserts the tokenization of the probe texts (special tokens
and odd Unicode included) is the tokenizer's, next-token agreement and max |Δlogit| within the type's
bounds, and for F32 greedy continuations equal to transformers'. `make verify-export` runs this module
alone and prints the table (tests/models/conftest.py keeps the rows).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ftkit.export import ExportError
from ftkit.export.gguf import check_gguf, llamacpp, write_gguf
from ftkit.export.gguf.architecture import architecture_of
from ftkit.export.verify import Probes
from ftkit.tasks import get_task
from ftkit.tasks.chat import ChatOptions
from ftkit.tasks.sentiment import SentimentOptions
from tests.models.families import BY_NAME, FAMILIES, rows
from tests.models.test_families import tokenizer_of

DTYPES = ["f32", "f16", "q8_0"]  # q4_0 measured by hand (docs): on random tiny models its top-1 is tie noise
ARCHITECTURE = {
    "llama3": "llama",
    "mistral": "llama",
    "qwen2.5": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "phi3": "phi3",
    "gpt2": "gpt2",
    "pythia": "gptneox",
}


def family_probes(name: str, tokenizer: object) -> Probes:
    """Held-out examples of the family's task (multi-turn conversations for chat families), cut as export cuts them."""
    if BY_NAME[name].chat:
        task = get_task(ChatOptions(name="chat"), max_length=1024)
        examples = [task.make_example(r, "test") for r in rows("customer_service", "test", 3)]
    else:
        task = get_task(SentimentOptions(name="sentiment", labels=["negative", "positive"]), max_length=512)
        examples = [task.make_example(r, "test") for r in rows("sentiment", "test", 3)]
    shown = [task.probe(example, tokenizer) for example in examples]
    return Probes(full=[p.full for p in shown], prompts=[p.prompt for p in shown])


def test_llama_cpp_is_installed_so_the_judge_is_llama_cpp() -> None:
    """`make test` installs ftkit[gguf]; without it these checks would be transformers judging its own reader."""
    assert llamacpp.available()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", [f.name for f in FAMILIES])
def test_llama_cpp_reads_the_gguf_as_transformers_runs_the_model(
    name: str, dtype: str, family_dir: Callable[[str], Path], tmp_path: Path, gguf_table: list[dict]
) -> None:
    folder = family_dir(name)
    tokenizer = tokenizer_of(folder)
    path = tmp_path / f"{name}-{dtype}.gguf"
    write_gguf(folder, path, dtype, "tiny")  # not the family's name: llama.cpp special-cases some (phi3: RSTRIP)
    check = check_gguf(folder, path, family_probes(name, tokenizer), dtype)  # raises past the bounds
    gguf_table.append({"family": name, "architecture": ARCHITECTURE[name]} | vars(check))
    assert check.judge.startswith("llama.cpp") and check.tokenizer_texts >= 7
    assert check.max_abs_logit_diff <= check.tolerance and check.next_token_agreement >= check.min_agreement
    if dtype == "f32":
        assert check.generations_equal == check.generations == 3


def test_the_architecture_comes_from_the_gguf_tables(family_dir: Callable[[str], Path]) -> None:
    import gguf
    from transformers import AutoConfig

    for name, arch in ARCHITECTURE.items():
        assert gguf.MODEL_ARCH_NAMES[architecture_of(AutoConfig.from_pretrained(family_dir(name)))] == arch


def test_an_architecture_ftkit_does_not_write_is_refused() -> None:
    from types import SimpleNamespace

    from transformers import BloomConfig

    with pytest.raises(ExportError, match="'bloom' is not supported .llama.cpp has this architecture"):
        architecture_of(BloomConfig())
    with pytest.raises(ExportError, match="llama.cpp has no such architecture.*convert_hf_to_gguf"):
        architecture_of(SimpleNamespace(model_type="made_up"))


def test_a_wrong_pre_tokenizer_is_caught_by_llama_cpp(
    family_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The judge can fail: Llama 3's split named as GPT-2's loads fine but tokenises digits and newlines apart."""
    from ftkit.export.gguf import vocab

    folder = family_dir("llama3")
    monkeypatch.setattr(vocab, "_pre_tokenizer", lambda spec: "gpt-2")
    write_gguf(folder, tmp_path / "m.gguf", "f32", "m")
    with pytest.raises(ExportError, match="encodes .* texts differently"):
        check_gguf(folder, tmp_path / "m.gguf", family_probes("llama3", tokenizer_of(folder)), "f32")


def test_without_llama_cpp_transformers_judges_and_says_so(
    family_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = family_dir("qwen2.5")
    write_gguf(folder, tmp_path / "m.gguf", "f32", "m")
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    check = check_gguf(folder, tmp_path / "m.gguf", family_probes("qwen2.5", tokenizer_of(folder)), "f32")
    assert check.judge == "transformers" and check.generations == 0  # transformers' reader is not asked to generate
    assert check.max_abs_logit_diff < 1e-3 and check.tokenizer_texts >= 7
