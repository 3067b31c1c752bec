"""Where an adapter came from, and whether it is being used with what it was trained on.

Every adapter folder's `manifest.json` carries, besides the sha256 of its files, a `lineage`
record: the base model's identity (the recipe's `model` section, the folder or hub id it
resolved to, and a fingerprint of its config and weights), the tokenizer and chat-template
hashes, the recipe hash, a hash of the data splits it was trained and evaluated on, and, once
evaluated, the held-out summary. A LoRA loaded onto a different base model produces plausible
garbage, and a chat template that differs from the trained one is the most reported cause of
fine-tunes that "stop working" after export; both are detected here instead of being guessed at.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from ftkit.errors import FtkitError
from ftkit.recipe import ModelConfig, Recipe
from ftkit.runs import ADAPTER_CONFIG, MANIFEST, RunDir, sha256_file, write_json

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


class LineageError(FtkitError):
    """An adapter used with a base model other than the one it was trained on."""


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.cache
def base_fingerprint(source: str) -> str:
    """A hash of a local model folder's config and weight files, or the hub commit for a hub id.

    Hashing the weights (not only the path) is what catches "same folder name, other model";
    cached per process because train and export both ask. A hub id that is not on disk is
    identified by its name and resolved commit where transformers recorded one.
    """
    folder = Path(source)
    if not folder.is_dir():
        return f"hub:{source}"
    files = sorted(p for p in folder.iterdir() if p.name == "config.json" or p.name.endswith(WEIGHT_SUFFIXES))
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def chat_template(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) else json.dumps(template, sort_keys=True)


def tokenizer_hash(tokenizer: Any) -> str:
    """The vocabulary and special tokens (not the template, which is hashed on its own)."""
    vocab = sorted(tokenizer.get_vocab().items())
    special = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    return sha256_text(json.dumps([vocab, special]))


def data_hash(splits: dict[str, Any]) -> str:
    """One hash over every split's examples, in order: the same data split the same way."""
    digest = hashlib.sha256()
    for name in sorted(splits):
        for example in splits[name].examples:
            digest.update(json.dumps([name, example.prompt, example.completion], ensure_ascii=False).encode())
    return digest.hexdigest()


def record(recipe: Recipe, source: str, tokenizer: Any, splits: dict[str, Any]) -> dict[str, Any]:
    """The lineage of an adapter trained from `recipe` on the base at `source`."""
    from ftkit import __version__

    return {
        "ftkit_version": __version__,
        "recipe": recipe.name,
        "recipe_sha256": sha256_text(recipe.to_yaml()),
        "model": recipe.model.model_dump(mode="json"),
        "base_model": {"source": recipe.model.source, "resolved": source, "fingerprint": base_fingerprint(source)},
        "tokenizer_sha256": tokenizer_hash(tokenizer),
        "chat_template_sha256": sha256_text(chat_template(tokenizer)),
        "data_sha256": data_hash(splits),
    }


def read(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's lineage record; {} for adapters written without one (other tools, old ftkit)."""
    manifest = adapter_dir / MANIFEST
    if not manifest.is_file():
        return {}
    return json.loads(manifest.read_text(encoding="utf-8")).get("lineage", {})


def base_config(adapter_dir: Path) -> ModelConfig:
    """The `model` section the adapter was trained with, to load its base model again.

    From the lineage record; else from the run's recipe.yaml beside the adapter; else, for adapters
    ftkit did not write, peft's `base_model_name_or_path` in full precision (the training
    quantization is unknown, and full precision is what any adapter can be loaded onto).
    """
    lineage = read(adapter_dir)
    if "model" in lineage:
        return _model_section(lineage["model"], adapter_dir, adapter_dir / MANIFEST)
    beside = RunDir(adapter_dir.parent).recipe
    if beside.is_file():
        return recipe_model(beside)
    config = adapter_dir / ADAPTER_CONFIG
    source = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path") if config.is_file() else None
    if not source:
        raise LineageError(
            f"{adapter_dir}: no manifest lineage and no base_model_name_or_path; cannot tell its base model"
        )
    return _model_section({"source": source, "quantization": "none"}, adapter_dir, config)


def _model_section(raw: Any, base_dir: Path, where: Path) -> ModelConfig:
    """A recorded `model` section, validated as a recipe's is (the base may have moved, or be an uncached hub
    id offline): a `LineageError` naming the file it came from and the key, not a pydantic traceback."""
    from pydantic import ValidationError

    try:
        return ModelConfig.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(["model", *map(str, first["loc"])])
        raise LineageError(f"{where}: {key}: {first['msg'].removeprefix('Value error, ')}") from None


def recipe_model(recipe_path: Path) -> ModelConfig:
    """A run's `model` section, read on its own: the recipe's data files may be gone where the adapter is used."""
    import yaml

    try:
        raw = yaml.safe_load(recipe_path.read_text(encoding="utf-8")) or {}
        return _model_section(raw.get("model") or {}, recipe_path.parent, recipe_path)
    except (yaml.YAMLError, AttributeError, UnicodeDecodeError) as error:
        problem = str(error).splitlines()[0]
        raise LineageError(
            f"{recipe_path}: cannot read its model section ({problem}); is it a recipe ftkit wrote?"
        ) from None


def check(adapter_dir: Path, source: str, tokenizer: Any | None) -> list[str]:
    """Compare an adapter's lineage with the base and tokenizer it is about to be used with.

    A different base model is an error (the LoRA deltas are relative to specific weights); a
    different tokenizer or chat template is returned as warnings (and logged), because using
    another template can be deliberate, but must never be silent.
    """
    lineage = read(adapter_dir)
    if not lineage:
        return []
    trained = lineage["base_model"]
    if trained["fingerprint"] != base_fingerprint(source):
        raise LineageError(
            f"{adapter_dir} was trained on base model {trained['source']} ({trained['resolved']}), but the base "
            f"being used is {source}, whose config/weights differ; load it onto the base it was trained on"
        )
    warnings = []
    if tokenizer is not None and lineage.get("tokenizer_sha256") != tokenizer_hash(tokenizer):
        warnings.append(f"{adapter_dir}: the tokenizer differs from the one the adapter was trained with")
    if tokenizer is not None and lineage.get("chat_template_sha256") != sha256_text(chat_template(tokenizer)):
        warnings.append(
            f"{adapter_dir}: the chat template differs from the one the adapter was trained with "
            "(outputs may degrade; use the adapter folder's own tokenizer and template)"
        )
    for warning in warnings:
        log.warning("warning: %s", warning)
    return warnings


def add_eval_summary(adapter_dir: Path, summary: dict[str, Any]) -> None:
    """Record the held-out result in the adapter's manifest (the file hashes are unaffected)."""
    manifest_path = adapter_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest.setdefault("lineage", {})["eval"] = summary
    write_json(manifest_path, manifest)
