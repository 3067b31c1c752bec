"""Shipping an adapter: merging, verification, the adapter package, GGUF and Ollama."""

from ftkit.errors import FtkitError


class ExportError(FtkitError):
    """An export that is not supported or whose result does not match the model it came from."""
