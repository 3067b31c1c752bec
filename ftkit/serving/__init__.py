"""Answering with a trained adapter: the shared runtime, the terminal chat and the HTTP server."""
