"""ftkit: fine-tune a causal LM from one YAML recipe and prove the adapter is better."""

__version__ = "0.2.0"
