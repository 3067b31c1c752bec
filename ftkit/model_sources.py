"""What a recipe's `model.source` names, checked before anything heavy (no weights, no network).

`ftkit validate` used to say "ok" to a source that was some other file or an uncached hub id while
offline, and the first command to load it ended in a transformers traceback. Here a source is one of:
`default`, a local model folder (config.json beside safetensors weights, or a config/tokenizer folder
that transformers reads), a GGUF file (its first four bytes are `GGUF`), or a well-formed hub id,
which offline must already be in the local Hugging Face cache. Each check reads at most a few
bytes or one small JSON file; importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ftkit import paths

GGUF_MAGIC = b"GGUF"
# huggingface_hub's rule for repo ids: [org/]name, letters, digits, '-', '_', '.', at most 96 characters,
# no '--' or '..', not starting or ending with '-' or '.'.
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
WEIGHTS_HINT = "a model folder (config.json + *.safetensors), a .gguf file, 'default' or a hub id such as org/name"


class SourceError(ValueError):
    """A `model.source` that is not what it claims; the recipe reports it under its key and line."""


def offline() -> bool:
    """Whether the Hugging Face hub is off limits (HF_HUB_OFFLINE set to anything but 0/false)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("0", "", "false", "no")


def looks_like_path(source: str) -> bool:
    return source.endswith(".gguf") or source.startswith((".", "/", "~")) or not _HUB_ID.match(source)


def check_source(source: str, base: Path, revision: str | None = None) -> str:
    """The source as `from_pretrained` and the GGUF converter take it: 'default', an absolute path or a hub id."""
    if source == "default":
        return source
    candidate = paths.absolute(base, source)
    if os.path.lexists(candidate) or looks_like_path(source):
        return str(_check_local(candidate))
    if not is_hub_id(source):
        raise SourceError(f"'{source}' is neither an existing path nor a hub id; use {WEIGHTS_HINT}")
    if offline() and not in_hub_cache(source, revision):
        raise SourceError(
            f"'{source}' is not in the local cache and HF_HUB_OFFLINE={os.environ['HF_HUB_OFFLINE']} is set; "
            f"download it once online, or point to a local folder (no folder {candidate} either)"
        )
    return source


def is_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and "--" not in source and ".." not in source and source[-1] not in "-."


def in_hub_cache(repo: str, revision: str | None) -> bool:
    """Whether the hub cache holds this repo's config.json (what every later load reads first)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json", revision=revision)
    return isinstance(found, str)


def _check_local(path: Path) -> Path:
    unusable = paths.problem(path, allow_directory=True)
    if unusable is not None:
        raise SourceError(unusable)
    real = Path(os.path.realpath(path))
    return _check_folder(real) if real.is_dir() else _check_file(real)


def _check_file(path: Path) -> Path:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == GGUF_MAGIC:
        return path
    if path.suffix == ".gguf":
        raise SourceError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); is it truncated?")
    hint = "; point to the folder that holds it" if path.suffix == ".safetensors" or path.name == "config.json" else ""
    raise SourceError(f"{path} is a file but not a model{hint}; model.source takes {WEIGHTS_HINT}")


def _check_folder(folder: Path) -> Path:
    config = folder / "config.json"
    if (folder / "adapter_config.json").is_file() and not config.is_file():
        raise SourceError(f"{folder} is a LoRA adapter folder, not a base model; use the model it was trained on")
    if not config.is_file():
        raise SourceError(
            f"{folder} is a folder but not a model folder (no config.json); model.source takes {WEIGHTS_HINT}"
        )
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SourceError(f"{config} is not valid JSON ({error}); the model folder is damaged") from None
    if not isinstance(settings, dict) or "model_type" not in settings:
        raise SourceError(f"{config} has no 'model_type'; it is not a transformers model config")
    has_weights = any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file()
    if not has_weights and any(folder.glob("*.bin")):
        raise SourceError(
            f"{folder} holds pickle weights (*.bin) only; ftkit loads safetensors only (safe to load), "
            "convert with save_pretrained(..., safe_serialization=True)"
        )
    if not has_weights and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise SourceError(f"{folder} has a config.json but neither *.safetensors weights nor a tokenizer")
    return folder
