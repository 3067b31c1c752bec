"""Continuous batching: one decode thread runs every reply in flight as a row of one batch, over one
KV cache, so four people asking at once share each forward pass instead of queueing for the model.

Between two decode steps, the requests that arrived are prefilled together and join the batch; each
step then feeds every row its last token. A row leaves the moment it ends (an end-of-turn token, its
token budget, a stop string, or a cancel when its client is gone) and the others go on.

Three things keep a row's answer what it would be alone:

- **Ragged rows.** Prompts are left-padded, so every row's next token sits in the last column; the
  attention mask hides the padding and position ids count from each row's first real token. A
  joining group's cache is left-padded to the running one's width (or the other way round), and
  columns that hold only padding once rows leave are cut.
- **Adapters per row.** peft's mixed-adapter batches (`adapter_names=`, one name per row,
  `__base__` for the base model) run the base matmul once for the whole batch and each adapter's
  LoRA on its own rows, so requests for different adapters share a step rather than taking turns.
- **Seeds per row.** Each request samples from its own `torch.Generator`, seeded by its `seed`
  (or randomly): what it draws does not depend on which other requests share its steps.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import torch

from ftkit.evaluation.inference import input_device, left_pad

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch
MAX_BATCH = 16


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens; temperature 0 means greedy. Sampling is temperature + nucleus (top_p),
    as OpenAI's API defines it: no top-k."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Job:
    """One reply being generated: what to continue, how, with which adapter, and where tokens go.

    `on_token` and `on_end` are called from the decode thread; `on_end` is called exactly once,
    after the last token, whether the job finished, was cancelled or failed (`error`).
    """

    prompt: list[int]
    sampling: Sampling
    adapter: str | None  # peft's adapter name; None: the base model
    on_token: Callable[[int], None]
    on_end: Callable[[], None]
    tokens: list[int] = field(default_factory=list)
    finish_reason: Literal["stop", "length"] = "length"
    error: BaseException | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator()
        if self.sampling.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(self.sampling.seed)

    def end(self, error: BaseException | None = None) -> None:
        self.error = error
        self.on_end()
        self.done.set()


@dataclass
class _Batch:
    """The rows in flight: their jobs, KV cache, attention mask over the cache's columns, and each
    row's last token (picked, not yet run through the model)."""

    jobs: list[Job]
    cache: Any  # transformers' DynamicCache, [rows, heads, columns, head_dim] per layer
    mask: torch.Tensor  # [rows, columns], 1 for a real token
    last: torch.Tensor  # [rows]


class Batcher:
    """The decode loop for one model; `submit` hands it jobs from any thread.

    The loop's thread starts with the first job, so a Batcher that is never used costs nothing.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int = MAX_BATCH) -> None:
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self.stop_ids = frozenset(eos_ids(model, tokenizer))
        self.widest = 0  # the most rows one step has decoded, for logs and tests
        self._peft = hasattr(model, "peft_config")
        self._waiting: list[Job] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, *jobs: Job) -> None:
        """Queue jobs; jobs submitted together are prefilled together (as long as there is room)."""
        with self._wake:
            self._waiting.extend(jobs)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="ftkit-decode", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _take(self, block: bool, room: int) -> list[Job]:
        with self._wake:
            while block and not self._waiting:
                self._wake.wait()
            taken, self._waiting = self._waiting[:room], self._waiting[room:]
        return taken

    def _loop(self) -> None:
        batch: _Batch | None = None
        while True:
            rows = len(batch.jobs) if batch else 0
            joining = [job for job in self._take(block=rows == 0, room=self.max_batch - rows) if self._live(job)]
            try:
                with torch.inference_mode():
                    if joining:
                        batch = self._admit(batch, joining)
                    if batch is not None:
                        self.widest = max(self.widest, len(batch.jobs))
                        batch = self._step(batch)
            except Exception as error:  # every job in flight learns of it; the loop serves the next ones
                log.exception("decoding failed")
                for job in (batch.jobs if batch else []) + joining:
                    if not job.done.is_set():
                        job.end(error)
                batch = None

    @staticmethod
    def _live(job: Job) -> bool:
        """A job cancelled before it was admitted ends without running."""
        if job.cancelled.is_set():
            job.end()
            return False
        return True

    def _forward(self, jobs: Sequence[Job], **inputs: Any) -> Any:
        """One forward pass for all rows. Rows of several systems go through peft's mixed-adapter batch
        (faster than one forward per adapter: each forward pays for the whole base model); a batch of
        one system goes through peft's active adapter, which skips the mixed batch's row indexing in
        every LoRA layer (`bench/serve_load.py` times the three). Only this thread runs the model, so
        switching the active adapter here races with nothing."""
        call = partial(self.model, **inputs, use_cache=True, logits_to_keep=1)
        systems = {job.adapter for job in jobs}
        if not self._peft:
            return call()
        if len(systems) > 1:
            return call(adapter_names=[job.adapter or BASE_ADAPTER for job in jobs])
        (adapter,) = systems
        if adapter is None:
            with self.model.disable_adapter():
                return call()
        if self.model.active_adapter != adapter:
            self.model.set_adapter(adapter)
        return call()

    def _admit(self, batch: _Batch | None, jobs: list[Job]) -> _Batch | None:
        """Prefill the joining jobs as one left-padded batch, pick their first tokens, and merge their
        cache into the running batch's."""
        from transformers import DynamicCache

        device = input_device(self.model)
        inputs = left_pad([job.prompt for job in jobs], self.tokenizer.pad_token_id or 0, device)
        # A cache of full layers, also for sliding-window models: the mask then applies the window,
        # and caches of different widths can be padded and joined column by column.
        out = self._forward(jobs, **inputs, past_key_values=DynamicCache())
        joined = _Batch(jobs, out.past_key_values, inputs["attention_mask"], self._pick(jobs, out.logits[:, -1]))
        return self._settle(joined if batch is None else _merge(batch, joined))

    def _step(self, batch: _Batch) -> _Batch | None:
        """Run every row's last token through the model and pick each row's next one."""
        mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=1)
        out = self._forward(
            batch.jobs,
            input_ids=batch.last.unsqueeze(-1),
            attention_mask=mask,
            position_ids=batch.mask.sum(-1, keepdim=True),  # the row's real tokens so far
            past_key_values=batch.cache,
        )
        batch.mask, batch.last = mask, self._pick(batch.jobs, out.logits[:, -1])
        return self._settle(batch)

    def _pick(self, jobs: Sequence[Job], logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token (argmax, or drawn from its own generator) handed to its job; the tokens
        leave the device in one copy per step, not one per row."""
        picked = logits.argmax(-1)
        for row, job in enumerate(jobs):
            if job.sampling.temperature > 0:
                picked[row] = sample(logits[row], job.sampling, job.generator)
        for job, token in zip(jobs, picked.tolist(), strict=True):
            job.tokens.append(token)
            job.on_token(token)
        return picked

    def _settle(self, batch: _Batch) -> _Batch | None:
        """End the rows that are done, drop them from the batch and cut all-padding columns."""
        keep = [row for row, job in enumerate(batch.jobs) if not self._finished(job)]
        if not keep:
            return None
        if len(keep) < len(batch.jobs):
            index = torch.tensor(keep, device=batch.mask.device)
            batch.cache.batch_select_indices(index)
            batch = _Batch([batch.jobs[row] for row in keep], batch.cache, batch.mask[index], batch.last[index])
            unused = int(batch.mask.argmax(-1).min())  # the leftmost real token of any row
            if unused:
                batch.cache = _crop_left(batch.cache, unused)
                batch.mask = batch.mask[:, unused:]
        return batch

    def _finished(self, job: Job) -> bool:
        """Whether `job` is done after its latest token, ending it if so."""
        stop = job.tokens[-1] in self.stop_ids or self._hit_stop_string(job)
        if stop or job.cancelled.is_set() or len(job.tokens) >= job.sampling.max_new_tokens:
            job.finish_reason = "stop" if stop else "length"
            job.end()
            return True
        return False

    def _hit_stop_string(self, job: Job) -> bool:
        """Stop strings are text, and one can end in the middle of a token: the reply so far is decoded
        (a few hundred tokens at most, microseconds next to a decode step)."""
        if not job.sampling.stop:
            return False
        text = self.tokenizer.decode(job.tokens, skip_special_tokens=True)
        return any(stop in text for stop in job.sampling.stop)


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> torch.Tensor:
    """One token drawn from `logits` at the sampling's temperature and top_p, with transformers' own
    warpers, from the request's generator."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    scores = TemperatureLogitsWarper(sampling.temperature)(None, logits.float().unsqueeze(0))
    if sampling.top_p < 1:
        scores = TopPLogitsWarper(sampling.top_p)(None, scores)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator)[0, 0]


def _merge(running: _Batch, joining: _Batch) -> _Batch:
    """One batch of both, every row left-padded to the wider cache, so last columns stay aligned."""
    from transformers import DynamicCache

    width = max(running.mask.shape[1], joining.mask.shape[1])
    layers = [
        tuple(torch.cat([_pad_left(a, width, dim=2), _pad_left(b, width, dim=2)]) for a, b in ((ka, kb), (va, vb)))
        for (ka, va, _), (kb, vb, _) in zip(running.cache, joining.cache, strict=True)
    ]
    mask = torch.cat([_pad_left(running.mask, width, dim=1), _pad_left(joining.mask, width, dim=1)])
    return _Batch(
        running.jobs + joining.jobs,
        DynamicCache(layers),
        mask,
        torch.cat([running.last, joining.last.to(running.last.device)]),
    )


def _pad_left(tensor: torch.Tensor, width: int, *, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _crop_left(cache: Any, columns: int) -> Any:
    from transformers import DynamicCache

    return DynamicCache([(keys[:, :, columns:], values[:, :, columns:]) for keys, values, _ in cache])


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a reply: the tokenizer's EOS, the chat template's end-of-turn token
    (`encoding.stop_ids`) and the model's generation config's (chat models often end a turn with a
    token other than the end of text, and not every checkpoint's generation config lists it)."""
    from ftkit.data.encoding import stop_ids

    configured = getattr(model.generation_config, "eos_token_id", None)
    extra = configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in [*stop_ids(tokenizer), *extra] if i is not None))
