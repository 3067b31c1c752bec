"""The decode loop of `ftkit chat` and `ftkit serve`: replies decoded together, with ragged prompts, mixed
adapters, rows joining mid-flight and rows leaving early, are token for token the replies `generate` gives
one request at a time.

The references are computed first, with peft's own adapter switching (`set_adapter`, `disable_adapter`) and
unpadded single-row `generate`, before any batch runs: the batcher never switches adapters, so the two
paths share nothing but the weights.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext

import pytest
import torch

from ftkit.serving import runtime
from ftkit.serving.batcher import Batcher, Job, Sampling, eos_ids
from ftkit.serving.stream import ReplyStream

QUESTIONS = [
    "Hi",
    "Where is my parcel? I ordered it two weeks ago and nothing has arrived yet.",
    "Can I change the delivery address?",
    "My card was charged twice for one order, and the support line kept me waiting for an hour. What now?",
    "Thanks!",
]


def prompt_of(deployment: runtime.Deployment, question: str) -> list[int]:
    return runtime.prompt_ids(deployment.tokenizer, [{"role": "user", "content": question}])


def alone(deployment: runtime.Deployment, name: str, prompt: list[int], max_new_tokens: int) -> list[int]:
    """The greedy reply of `generate` for one unpadded prompt, with the adapter switched the peft way."""
    model, adapter = deployment.model, deployment.adapters[name]
    if adapter is not None:
        model.set_adapter(adapter)
    with model.disable_adapter() if adapter is None else nullcontext(), torch.inference_mode():
        output = model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_ids(model, deployment.tokenizer),
            pad_token_id=deployment.tokenizer.pad_token_id,
        )
    return output[0, len(prompt) :].tolist()


class Collected:
    """A job's tokens as the decode thread hands them over, with an event once `after` have arrived."""

    def __init__(self, after: int = 1) -> None:
        self.tokens: list[int] = []
        self.after, self.arrived, self.ended = after, threading.Event(), threading.Event()

    def token(self, token: int) -> None:
        self.tokens.append(token)
        if len(self.tokens) >= self.after:
            self.arrived.set()

    def job(self, deployment: runtime.Deployment, name: str, prompt: list[int], sampling: Sampling) -> Job:
        return Job(prompt, sampling, deployment.adapters[name], on_token=self.token, on_end=self.ended.set)


def finish(*jobs: Job) -> None:
    for job in jobs:
        assert job.done.wait(timeout=60), "the decode loop did not finish the job"
        assert job.error is None, job.error


@pytest.fixture
def batcher(deployment: runtime.Deployment) -> Batcher:
    """A fresh decode loop on the module's model, so `widest` counts this test's batches only."""
    return Batcher(deployment.model, deployment.tokenizer)


def test_mixed_adapter_ragged_batch_gives_each_request_its_one_at_a_time_reply(deployment, batcher) -> None:
    names = ["base", "alpha", "beta", "alpha", "beta"]
    budgets = [12, 5, 12, 9, 3]  # rows leave the batch at different steps
    prompts = [prompt_of(deployment, q) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) == len(prompts), "ragged: every prompt has its own length"
    expected = [alone(deployment, *args) for args in zip(names, prompts, budgets, strict=True)]
    assert expected[1] != expected[3][:5] or prompts[1] != prompts[3]
    assert len({tuple(alone(deployment, name, prompts[0], 8)) for name in ("base", "alpha", "beta")}) == 3

    jobs = [
        Collected().job(deployment, name, prompt, Sampling(max_new_tokens=budget))
        for name, prompt, budget in zip(names, prompts, budgets, strict=True)
    ]
    batcher.submit(*jobs)
    finish(*jobs)
    assert batcher.widest == len(jobs), "all five were decoded in one batch"
    assert [job.tokens for job in jobs] == expected

    for name, prompt, budget, want in zip(names, prompts, budgets, expected, strict=True):
        again = Collected().job(deployment, name, prompt, Sampling(max_new_tokens=budget))  # alone: no mixed batch
        batcher.submit(again)
        finish(again)
        assert again.tokens == want


def test_requests_joining_a_running_batch_get_their_one_at_a_time_reply(deployment, batcher) -> None:
    first = prompt_of(deployment, QUESTIONS[3])
    later = [(name, prompt_of(deployment, q)) for name, q in (("beta", QUESTIONS[0]), ("base", QUESTIONS[1]))]
    expected = [alone(deployment, "alpha", first, 24)] + [alone(deployment, name, p, 16) for name, p in later]

    running = Collected(after=6)
    head = running.job(deployment, "alpha", first, Sampling(max_new_tokens=24))
    batcher.submit(head)
    assert running.arrived.wait(timeout=60)
    joined = [Collected().job(deployment, name, p, Sampling(max_new_tokens=16)) for name, p in later]
    batcher.submit(*joined)
    finish(head, *joined)
    assert len(head.tokens) == 24 and batcher.widest == 3, "the two joined the first one mid-reply"
    assert [job.tokens for job in (head, *joined)] == expected


def test_a_seeded_sampled_reply_does_not_depend_on_its_batch(deployment, batcher) -> None:
    prompt = prompt_of(deployment, QUESTIONS[2])
    seeded = Sampling(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    lone = Collected().job(deployment, "beta", prompt, seeded)
    batcher.submit(lone)
    finish(lone)

    others = [
        Collected().job(deployment, "alpha", prompt_of(deployment, q), Sampling(12, temperature=1.0))
        for q in QUESTIONS[:3]
    ]
    crowded = Collected().job(deployment, "beta", prompt, seeded)
    batcher.submit(others[0], crowded, *others[1:])
    finish(crowded, *others)
    assert batcher.widest == 4 and crowded.tokens == lone.tokens
    other_seed = Collected().job(deployment, "beta", prompt, Sampling(12, temperature=1.0, top_p=0.9, seed=8))
    batcher.submit(other_seed)
    finish(other_seed)
    assert other_seed.tokens != lone.tokens, "the seed decides the draw"


def test_a_cancelled_row_leaves_the_batch_and_the_others_go_on(deployment, batcher) -> None:
    prompts = [prompt_of(deployment, q) for q in QUESTIONS[:2]]
    expected = alone(deployment, "alpha", prompts[1], 20)
    gone, stays = Collected(after=3), Collected()
    leaving = gone.job(deployment, "beta", prompts[0], Sampling(max_new_tokens=200))
    staying = stays.job(deployment, "alpha", prompts[1], Sampling(max_new_tokens=20))
    batcher.submit(leaving, staying)
    assert gone.arrived.wait(timeout=60)
    leaving.cancelled.set()
    finish(leaving, staying)
    assert 3 <= len(leaving.tokens) < 20 and leaving.finish_reason == "length" and gone.ended.is_set()
    assert staying.tokens == expected


def test_a_job_cancelled_before_it_runs_ends_without_tokens(deployment, batcher) -> None:
    waiting = Collected().job(deployment, "base", prompt_of(deployment, "Hi"), Sampling(max_new_tokens=4))
    waiting.cancelled.set()
    batcher.submit(waiting)
    finish(waiting)
    assert waiting.tokens == [] and batcher.widest == 0


def test_a_stop_string_ends_its_row_and_not_the_others(deployment, batcher) -> None:
    prompt, other = prompt_of(deployment, QUESTIONS[1]), prompt_of(deployment, QUESTIONS[3])
    full = deployment.tokenizer.decode(alone(deployment, "beta", prompt, 20), skip_special_tokens=True)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected_other = alone(deployment, "alpha", other, 30)
    beside = Collected().job(deployment, "alpha", other, Sampling(max_new_tokens=30))
    batcher.submit(beside)
    stream = ReplyStream(batcher, prompt, Sampling(max_new_tokens=20, stop=(stop,)), adapter="beta")
    assert "".join(stream) == full[: full.index(stop)] == stream.reply.text
    finish(beside)
    assert stream.reply.finish_reason == "stop" and stream.reply.completion_tokens < 20
    assert beside.tokens == expected_other and batcher.widest == 2


def test_a_failing_step_fails_its_batch_and_the_loop_serves_the_next_request(deployment, batcher) -> None:
    broken = Collected().job(deployment, "base", [len(deployment.tokenizer) + 10**6], Sampling(max_new_tokens=4))
    batcher.submit(broken)
    assert broken.done.wait(timeout=60) and isinstance(broken.error, IndexError)
    prompt = prompt_of(deployment, "Hi")
    after = Collected().job(deployment, "alpha", prompt, Sampling(max_new_tokens=4))
    batcher.submit(after)
    finish(after)
    assert after.tokens == alone(deployment, "alpha", prompt, 4)
