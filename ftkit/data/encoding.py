"""How an example becomes token ids and labels: the one place that decides what carries loss.

Prompt/completion pairs and chat-template spans both live here, so the tasks, the inference
primitives, the trainer and serving share one rendering without importing the task registry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ftkit.errors import FtkitError, RowError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value that transformers' cross-entropy skips


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_truncated: bool
    notes: tuple[str, ...] = ()  # what rendering adapted to the template (encoding's SYSTEM_FOLDED, ...)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def trained_ids(self) -> list[int]:
        """The token ids that carry loss, in order."""
        return [label for label in self.labels if label != IGNORE_INDEX]


def encode_prompt_completion(tokenizer: Any, prompt: str, completion: str, max_length: int) -> Encoded:
    """Encode with loss on the completion and the EOS that ends it.

    EOS is appended by id, never by text, and carries loss: the pad token is distinct from EOS
    (see `ftkit.models.load_tokenizer`), so the collator's padding mask cannot hide it.
    When the pair is too long, tokens are cut from the middle of the prompt (its head holds the
    instruction, its tail the cue right before the answer); the completion is never cut.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    budget = max_length - len(completion_ids)
    if budget < 1:
        raise RowError(
            f"the completion alone is {len(completion_ids)} tokens, over data.max_length={max_length}; "
            "raise data.max_length"
        )
    truncated = len(prompt_ids) > budget
    prompt_ids = truncate_middle(prompt_ids, budget)
    return Encoded(
        input_ids=prompt_ids + completion_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + completion_ids,
        prompt_truncated=truncated,
    )


def truncate_middle(ids: list[int], budget: int) -> list[int]:
    """Keep the head (the instruction) and the tail (the cue before the answer) of a long prompt."""
    if len(ids) <= budget:
        return ids
    head = budget // 2
    return ids[:head] + ids[len(ids) - (budget - head) :]


def last_span_start(labels: list[int]) -> int:
    """Where the last run of loss-carrying labels begins (the final answer of an example).

    A prompt/completion example has one such run, its completion; a multi-turn conversation has one
    per assistant turn, and a probe or a server asks for the last one.
    """
    end = max((i for i, label in enumerate(labels) if label != IGNORE_INDEX), default=-1)
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return max(start, 0) if end >= 0 else len(labels)


SYSTEM_FOLDED = (
    "the chat template has no system role: the system text is put before the first user turn "
    "(Gemma's own convention), in training and in chat/serve alike"
)
FINAL_TURN_ONLY = (
    "the chat template renders earlier assistant turns differently once the conversation goes on "
    "(e.g. Qwen3 drops their <think> blocks): only the final assistant turn carries loss"
)


@dataclass(frozen=True)
class Rendered:
    """A conversation as token ids, the [start, end) span of each trained assistant turn, and what the
    rendering had to adapt to the template (`SYSTEM_FOLDED`, `FINAL_TURN_ONLY`), for the pre-flight report."""

    ids: list[int]
    spans: list[tuple[int, int]]
    notes: tuple[str, ...] = ()


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


class NoChatTemplateError(FtkitError):
    """A tokenizer without a chat template asked to render a conversation."""


def _apply(tokenizer: Any, messages: Sequence[Mapping[str, str]], generation_prompt: bool) -> list[int]:
    """The template's own rendering; a template that raises on a conversation (roles that do not alternate,
    a role it lacks) becomes a row error with the template's message instead of a Jinja traceback."""
    from jinja2 import TemplateError

    try:
        ids = tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=generation_prompt)
    except TemplateError as error:
        raise RowError(f"the model's chat template refuses this conversation: {error}") from None
    return list(ids["input_ids"] if isinstance(ids, Mapping) else ids)


_SYSTEM_ROLE: dict[str, bool] = {}  # chat template text -> whether it renders a system turn


def accepts_system(tokenizer: Any) -> bool:
    """Whether the chat template renders a system turn; Gemma 2's raises "System role not supported"."""
    from jinja2 import TemplateError

    template = str(tokenizer.chat_template)
    if template not in _SYSTEM_ROLE:
        turns = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
        try:
            tokenizer.apply_chat_template(turns, tokenize=False)
            _SYSTEM_ROLE[template] = True
        except TemplateError:
            _SYSTEM_ROLE[template] = False
    return _SYSTEM_ROLE[template]


def fold_system(messages: Sequence[Mapping[str, str]]) -> list[Mapping[str, str]]:
    """The system text put before the first user turn, separated by a blank line: what Gemma 3's template
    does itself and Gemma's documentation advises for Gemma 2, whose template has no system role."""
    if not messages or messages[0]["role"] != "system":
        return list(messages)
    system, rest = messages[0]["content"], list(messages[1:])
    first = next((i for i, turn in enumerate(rest) if turn["role"] == "user"), None)
    if first is not None:
        rest[first] = {"role": "user", "content": f"{system}\n\n{rest[first]['content']}"}
    return rest


def template_turns(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> tuple[list[Mapping[str, str]], bool]:
    """The conversation as the template can take it, and whether its system turn had to be folded."""
    if not has_chat_template(tokenizer):
        raise NoChatTemplateError(
            "model.source: its tokenizer has no chat template, which task chat renders conversations with "
            "(base models such as GPT-2 or Pythia have none); use an instruct model, or task sentiment or qa"
        )
    if messages and messages[0]["role"] == "system" and not accepts_system(tokenizer):
        return fold_system(messages), True
    return list(messages), False


_said: set[str] = set()


def say_once(note: str) -> None:
    """A note about how the template is used, logged (stderr) once per process."""
    if note not in _said:
        _said.add(note)
        log.warning("note: %s", note)


def render_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]], *, generation_prompt: bool) -> list[int]:
    """A conversation rendered by the tokenizer's own chat template, as token ids (a system turn folded into
    the first user turn where the template has no system role, exactly as training rendered it)."""
    turns, folded = template_turns(tokenizer, messages)
    if folded:
        say_once(SYSTEM_FOLDED)
    return _apply(tokenizer, turns, generation_prompt)


def special_ids(tokenizer: Any) -> set[int]:
    """The named special tokens and every added token marked special (a template's end-of-turn token
    usually is one without a name: Llama 3's <|eot_id|>, Gemma's <end_of_turn>, Phi-3's <|end|>)."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return {i for i, token in added.items() if getattr(token, "special", False)} | set(tokenizer.all_special_ids)


def turn_end(ids: Sequence[int], start: int, specials: set[int]) -> int:
    """Where the assistant turn that starts at `start` ends: just after its first special token, the end of
    turn. What a template writes after it (ChatML's newline, Phi-3's EOS at the very end) belongs between
    turns and carries no loss; a turn with no special token ends where the rendering ends."""
    return next((i + 1 for i in range(start, len(ids)) if ids[i] in specials), len(ids))


def assistant_spans(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> Rendered:
    """The rendered conversation and the [start, end) token span of every assistant turn: its reply and
    its end-of-turn token.

    The spans come from the template itself: the conversation up to turn i is rendered with the
    generation prompt, then up to the end of turn i, and the tokens in between, up to the end-of-turn
    token, are that turn's reply. No marker string is searched for, so a marker that tokenises
    differently in context cannot break masking. A template that renders an earlier turn differently
    once the conversation continues (Qwen3) leaves the final turn alone trained (`FINAL_TURN_ONLY`).
    """
    turns, folded = template_turns(tokenizer, messages)
    notes = (SYSTEM_FOLDED,) if folded else ()
    ids = _apply(tokenizer, turns, generation_prompt=False)
    specials = special_ids(tokenizer)
    spans = []
    for i, message in enumerate(turns):
        if message["role"] != "assistant":
            continue
        span = _turn_span(tokenizer, turns, i, ids, specials)
        if span is None:
            if i < len(turns) - 1:
                return _final_turn(tokenizer, turns, ids, specials, (*notes, FINAL_TURN_ONLY))
            raise RowError(
                "the tokenizer's chat template does not render a conversation as a sequence of its turns, "
                "so assistant turns cannot be located by token; use a model with a standard chat template"
            )
        spans.append(span)
    return Rendered(ids, spans, notes)


def _turn_span(
    tokenizer: Any, turns: Sequence[Mapping[str, str]], i: int, ids: list[int], specials: set[int]
) -> tuple[int, int] | None:
    """Turn i's span in `ids`, or None when rendering the conversation up to it is not a prefix of `ids`."""
    prompt = _apply(tokenizer, turns[:i], generation_prompt=True)
    upto = _apply(tokenizer, turns[: i + 1], generation_prompt=False)
    start = len(prompt)
    end = turn_end(upto, start, specials)
    if ids[:start] != prompt or ids[:end] != upto[:end] or end <= start:
        return None
    return start, end


def _final_turn(
    tokenizer: Any, turns: Sequence[Mapping[str, str]], ids: list[int], specials: set[int], notes: tuple[str, ...]
) -> Rendered:
    span = _turn_span(tokenizer, turns, len(turns) - 1, ids, specials)
    if span is None:
        raise RowError(
            "the chat template renders the final assistant turn after another context than the generation "
            "prompt chat and serve would send (Mistral v0.3's drops the system turn from finished conversations), "
            "so training would not match serving; remove the system turn (from the data, and "
            "task.system_prompt: null), or use a model whose template renders both alike"
        )
    return Rendered(ids, [span], notes)


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the chat template ends an assistant turn with, found by rendering a one-turn
    probe; None without a template or when the turn ends in no special token."""
    if not has_chat_template(tokenizer):
        return None
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    try:
        rendered = assistant_spans(tokenizer, probe)
    except FtkitError:
        return None
    last = rendered.ids[rendered.spans[-1][1] - 1]
    return last if last in special_ids(tokenizer) else None


def stop_ids(tokenizer: Any) -> list[int]:
    """Every token that ends an answer: EOS, and the chat template's end-of-turn token when it is another
    one (Gemma's <end_of_turn>, Phi-3's <|end|>). Training checks that one of them carries loss, and
    generation stops on any, whatever the model's generation config lists."""
    end = end_of_turn_id(tokenizer)
    return list(dict.fromkeys(i for i in (tokenizer.eos_token_id, end) if i is not None))
