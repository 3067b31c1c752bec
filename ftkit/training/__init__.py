"""Training: the Trainer wiring, LoRA adapters, several processes, and the `ftkit train` workflow."""
