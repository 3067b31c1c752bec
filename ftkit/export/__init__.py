"""Shipping an adapter: merging, verification, the adapter package, GGUF and Ollama."""
