"""llama.cpp, the program that serves the file, as the judge of what ftkit wrote (llama-cpp-python).

`LlamaCppModel` wraps a GGUF file loaded by llama.cpp in the few calls ftkit's own inference makes of a
transformers causal LM (`model(input_ids, attention_mask, logits_to_keep)`,
`model.generate`), so the export checks and a task's own `predict` (label scoring, generation) run
unchanged on llama.cpp's logits (label scoring through `score_options`, which `inference.score_options`
hands to it: llama.cpp takes no tree mask). Rows run one at a time; llama.cpp's KV cache keeps the common prefix
of consecutive sequences, so scoring K labels after one prompt evaluates the prompt once.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from ftkit.export import ExportError


def available() -> bool:
    """Whether llama-cpp-python is installed (`pip install 'ftkit[gguf]'`)."""
    return importlib.util.find_spec("llama_cpp") is not None


def version() -> str:
    import llama_cpp

    return f"llama.cpp (llama-cpp-python {llama_cpp.__version__})"


def threads() -> int:
    """llama.cpp's threads: FTKIT_LLAMA_CPP_THREADS, else 1. Its threads meet at a barrier after every op, so on a
    shared machine one thread waiting for a busy core stalls them all (0.6 s per decode of a tiny model measured
    with 2 threads on 2 loaded cores); raise it on a machine of your own."""
    return int(os.environ.get("FTKIT_LLAMA_CPP_THREADS", "1"))


class LlamaCppModel:
    """A GGUF file in llama.cpp, answering the calls of a transformers causal LM that ftkit makes."""

    def __init__(self, path: Path, context: int) -> None:
        from llama_cpp import Llama

        try:
            self.llm = Llama(
                model_path=str(path),
                n_ctx=context,
                n_batch=min(context, 512),
                logits_all=True,  # every position's logits, for label scoring and the checks
                n_threads=threads(),
                verbose=False,
            )
        except ValueError as error:  # llama-cpp-python's one error for a file llama.cpp cannot load
            raise ExportError(f"llama.cpp cannot load {path}: {error}") from error
        self.device = torch.device("cpu")

    # the parts of the transformers API ftkit's inference touches
    def eval(self) -> LlamaCppModel:
        return self

    def get_input_embeddings(self) -> Any:
        return SimpleNamespace(weight=SimpleNamespace(device=self.device))

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's tokenization, special tokens parsed and BOS added as the file says."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def logits(self, tokens: list[int], last: int = 0) -> torch.Tensor:
        """Logits at the last `last` positions of `tokens` (0: every position; [last, vocab]), re-using what the
        context already holds. Only those rows are copied: a generated token needs one, not the whole context."""
        if len(tokens) > self.llm.n_ctx():
            raise ExportError(
                f"a probe of {len(tokens)} tokens is longer than the llama.cpp context {self.llm.n_ctx()}"
            )
        held = self.llm.input_ids[: self.llm.n_tokens].tolist()
        keep = 0
        while keep < min(len(held), len(tokens)) and held[keep] == tokens[keep]:
            keep += 1
        if keep < len(tokens):
            self.llm.n_tokens = keep  # eval() drops the cache beyond n_tokens
            self.llm.eval(tokens[keep:])
        return torch.from_numpy(self.llm.scores[len(tokens) - (last or len(tokens)) : len(tokens)].copy())

    @torch.inference_mode()
    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        **_: Any,
    ) -> SimpleNamespace:
        """Logits of each row's unmasked tokens at their columns; zeros elsewhere."""
        width = input_ids.shape[1]
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask[:, -width:]
        keep = logits_to_keep or width
        out = torch.zeros(input_ids.shape[0], keep, self.llm.n_vocab())
        for i, (row, row_mask) in enumerate(zip(input_ids.tolist(), mask.tolist())):
            columns = [j for j, m in enumerate(row_mask) if m]
            logits = self.logits([row[j] for j in columns])
            for logit, column in zip(logits, columns):
                if column >= width - keep:
                    out[i, column - (width - keep)] = logit
        return SimpleNamespace(logits=out)

    @torch.inference_mode()
    def score_options(self, prompts: Sequence[Sequence[int]], options: Sequence[Sequence[int]]) -> list[list[float]]:
        """Log-likelihood of every option after every prompt, as `inference.score_options` defines it; the
        prompt is evaluated once per row (the context keeps it while the options are scored)."""
        scores = []
        for prompt in prompts:
            row = []
            for option in options:
                logits = self.logits([*prompt, *option[:-1]], last=len(option))  # the positions predicting option
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                row.append(float(logprobs[torch.arange(len(option)), torch.tensor(option)].sum()))
            scores.append(row)
        return scores

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        eos_token_id: list[int],
        pad_token_id: int,
        **_: Any,
    ) -> torch.Tensor:
        """Greedy continuation of each row, padded after its stop token as transformers' generate pads it."""
        stops = set(eos_token_id)
        news = []
        for row, row_mask in zip(input_ids.tolist(), attention_mask.tolist()):
            tokens = [t for t, m in zip(row, row_mask) if m]
            new: list[int] = []
            while len(new) < max_new_tokens and not (new and new[-1] in stops):
                new.append(int(self.logits(tokens + new, last=1)[0].argmax()))
            news.append(new)
        out = torch.full((input_ids.shape[0], input_ids.shape[1] + max(map(len, news), default=0)), pad_token_id)
        out[:, : input_ids.shape[1]] = input_ids
        for i, new in enumerate(news):
            out[i, input_ids.shape[1] : input_ids.shape[1] + len(new)] = torch.tensor(new, dtype=out.dtype)
        return out


def quantize(source: Path, target: Path, file_type: str) -> None:
    """llama.cpp's own quantizer (for the k-quants the `gguf` package cannot write), e.g. 'MOSTLY_Q4_K_M'."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{file_type}")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        raise ExportError(f"llama.cpp could not quantize {source} to {file_type}")
