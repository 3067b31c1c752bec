"""What `ftkit chat` and `ftkit serve` share once the targets are known: one loaded base model with
its adapters, chosen per reply, and the conversation rendered by the tokenizer's chat template.

Each adapter sits on the one base under its run's name; the base answers with the adapters off.
Replies are decoded by one `Batcher` per deployment (concurrent replies share its batches, each row
with its own adapter) and read through `ftkit.serving.stream`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ftkit.recipe import ModelConfig
from ftkit.serving.batcher import Batcher, Sampling
from ftkit.serving.stream import ReplyStream
from ftkit.serving.targets import BASE_NAME, DeployError, Target


@dataclass
class Deployment:
    """A loaded base model with its adapters, and which public name selects what."""

    model: Any
    tokenizer: Any
    adapters: dict[str, str | None]  # public name -> peft adapter name (None: the base, adapters off)
    context: int  # tokens the model attends to, prompt + reply
    batcher: Batcher = field(init=False)

    def __post_init__(self) -> None:
        self.batcher = Batcher(self.model, self.tokenizer)

    @property
    def names(self) -> list[str]:
        return list(self.adapters)

    def reply(self, name: str, prompt: list[int], sampling: Sampling) -> ReplyStream:
        """The reply of system `name` to `prompt`, decoded alongside any other replies in flight."""
        return ReplyStream(self.batcher, prompt, sampling, adapter=self.adapters[name])


def load(targets: Sequence[Target], base: ModelConfig) -> Deployment:
    """Load the base model once and put every target's adapter on it, checking each one's lineage.

    Passing the tokenizer to `adapters.load` is what reports (on stderr and in the server log) a
    chat template other than the one the adapter was trained with.
    """
    from ftkit.data.encoding import has_chat_template
    from ftkit.models import load_model, load_tokenizer, resolve_source
    from ftkit.training import adapters

    source = resolve_source(base.source)
    if not has_chat_template(load_tokenizer(source, base)):  # refused before any weight loads
        raise DeployError(
            f"the tokenizer of {source} has no chat template; chat and serve need a chat model "
            "(base models such as GPT-2 or Pythia have none): serve a model trained from an instruct model"
        )
    loaded = load_model(base)
    model = loaded.model
    names: dict[str, str | None] = {BASE_NAME: None}
    for target in targets:
        if target.adapter is not None:
            inner = peft_name(target.name)
            model = adapters.load(model, target.adapter, name=inner, tokenizer=loaded.tokenizer)
            names[target.name] = inner
    model.eval()
    context = getattr(model.config, "max_position_embeddings", None) or loaded.tokenizer.model_max_length
    return Deployment(model=model, tokenizer=loaded.tokenizer, adapters=names, context=int(context))


def peft_name(name: str) -> str:
    """The adapter's name inside peft, which keeps adapters in module dicts: no dots (a run named
    `qwen2.5-lora` is served as `qwen2.5-lora`, held by peft as `qwen2_5-lora`)."""
    return name.replace(".", "_")


Role = Literal["system", "user", "assistant"]


@dataclass
class Conversation:
    """The chat history a reply is generated from: an optional system prompt and the turns so far."""

    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def add(self, role: Role, content: str) -> None:
        self.turns.append({"role": role, "content": content})

    def reset(self) -> None:
        self.turns.clear()


def prompt_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The conversation rendered by the tokenizer's own chat template, ending with the assistant's
    generation prompt: the same rendering the chat task trains on (`ftkit.data.encoding`)."""
    from ftkit.data.encoding import render_ids

    return render_ids(tokenizer, messages, generation_prompt=True)
