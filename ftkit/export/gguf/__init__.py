"""GGUF for llama.cpp and Ollama: the writer (`writer`, with `architecture` and `vocab`), llama.cpp as the
judge (`llamacpp`, `check`), and the held-out metric through llama.cpp (`heldout`).

`ftkit export --format gguf` merges, writes with `writer.write_gguf`, checks with `check.check_gguf` and,
for a run with held-out data, measures `heldout.evaluate_gguf`; each step refuses rather than keeps a
file that does not match the adapter.
"""

from ftkit.export.gguf.check import GgufCheck, check_gguf
from ftkit.export.gguf.writer import DTYPES, write_gguf

GGUF_VERIFICATION = "gguf_verification.json"

__all__ = ["DTYPES", "GGUF_VERIFICATION", "GgufCheck", "check_gguf", "write_gguf"]
