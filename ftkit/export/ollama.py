"""Ollama: a Modelfile whose TEMPLATE is translated from the trained Jinja chat template, checked to
render test conversations to exactly the same text, with the stop tokens the template ends turns with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ftkit.export import ExportError
from ftkit.export.gguf.vocab import added_tokens


@dataclass
class RoleTemplate:
    """A chat template that wraps each message in a per-role prefix and suffix (ChatML, Llama-2/3, Zephyr, ...)."""

    prefix: dict[str, str]
    suffix: dict[str, str]
    generation: str  # what add_generation_prompt appends
    default_system: str | None  # a system prompt the template inserts when none is given

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """What the Go template written to the Modelfile produces for these messages."""
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        body = "".join(self.prefix[m["role"]] + m["content"] + self.suffix[m["role"]] for m in messages)
        return body + self.generation

    def go_template(self) -> str:
        branches = "".join(
            f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}'
            f"{self.prefix[role]}{{{{ .Content }}}}{self.suffix[role]}"
            for i, role in enumerate(("system", "user", "assistant"))
        )
        default = ""
        if self.default_system is not None:  # in the template, not SYSTEM: Ollama drops an empty SYSTEM
            default = (
                '{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}'
                f"{self.prefix['system']}{self.default_system}{self.suffix['system']}{{{{ end }}}}"
            )
        return f"{default}{{{{ range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}{self.generation}"


SYSTEM, USER, ASSISTANT = "\x00SYSTEM\x00", "\x00USER\x00", "\x00ASSISTANT\x00"


def infer_role_template(tokenizer: Any) -> RoleTemplate:
    """Read the per-role wrappers off the Jinja template by rendering marker messages, then check them.

    Two things the Jinja text holds that a Modelfile must not: a BOS token at the start when the GGUF
    already adds one (llama.cpp and Ollama add it on tokenising; both would double it), and a tail the
    template writes only after a finished conversation (Phi-3's EOS), which a prompt never has."""
    bos = tokenizer.bos_token if added_tokens(tokenizer)["bos"] else None

    def render(messages: list[dict[str, str]], generation: bool = False) -> str:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        return text[len(bos) :] if bos and text.startswith(bos) else text

    system = [{"role": "system", "content": SYSTEM}]
    user = system + [{"role": "user", "content": USER}]
    full = user + [{"role": "assistant", "content": ASSISTANT}]
    try:
        texts = [render(system), render(user), render(full), render(user, True), render(full[1:])]
    except Exception as error:  # jinja raises on templates that reject these conversations
        raise ExportError(
            f"Ollama export: the chat template cannot render a system/user/assistant conversation ({error}); "
            "a Modelfile TEMPLATE cannot refuse a system message, so write it by hand"
        ) from None
    tail = _conversation_end(tokenizer, texts)
    r_system, r_user, r_full, r_generation, r_no_system = (t.removesuffix(tail) for t in texts)
    if not (r_user.startswith(r_system) and r_full.startswith(r_user) and r_generation.startswith(r_user)):
        raise ExportError(
            "Ollama export: the chat template is not a per-message template (adding a turn changes the text "
            "before it); write the Modelfile TEMPLATE by hand"
        )
    blocks = {
        "system": (r_system, SYSTEM),
        "user": (r_user[len(r_system) :], USER),
        "assistant": (r_full[len(r_user) :], ASSISTANT),
    }
    prefix, suffix = {}, {}
    for role, (block, marker) in blocks.items():
        if marker not in block:
            raise ExportError(
                f"Ollama export: the chat template writes a {role} message's text outside its own turn "
                f"(e.g. a system message inside the first user turn); write the Modelfile TEMPLATE by hand"
            )
        prefix[role], _, suffix[role] = block.partition(marker)
    default_system = None
    head = r_no_system[: max(r_no_system.find(prefix["user"] + USER), 0)]
    if (
        head.startswith(prefix["system"])
        and head.endswith(suffix["system"])
        and len(head) >= len(prefix["system"] + suffix["system"])
    ):
        default_system = head[len(prefix["system"]) : len(head) - len(suffix["system"])]
    template = RoleTemplate(prefix, suffix, r_generation[len(r_user) :], default_system)
    _check_translation(template, render)
    return template


def _conversation_end(tokenizer: Any, texts: Sequence[str]) -> str:
    """The special token a template writes after a finished conversation only (not before a generation
    prompt, e.g. Phi-3's EOS), or '' when finished conversations extend each other as they are."""
    r_system, r_user, r_full, r_generation, _ = texts
    if r_full.startswith(r_user) and r_generation.startswith(r_user):
        return ""
    ends = [t for t in tokenizer.all_special_tokens if all(x.endswith(t) for x in (r_system, r_user, r_full))]
    return max(ends, key=len, default="")


CONVERSATIONS = [
    [{"role": "user", "content": "Hi there!"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2\nwith two lines"},
    ],
    [
        {"role": "user", "content": "Where is my order #1234?"},
        {"role": "assistant", "content": "Let me check."},
        {"role": "user", "content": "Thanks"},
    ],
]


def _check_translation(template: RoleTemplate, render: Any) -> None:
    """The translated template must reproduce the Jinja one exactly on conversations it was not built from."""
    for conversation in CONVERSATIONS:
        got, expected = template.render(conversation), render(conversation, True)
        if got != expected:
            at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            raise ExportError(
                f"Ollama export: the translated template renders a {len(conversation)}-message test conversation "
                f"as {got[max(at - 20, 0) : at + 30]!r} where the chat template has "
                f"{expected[max(at - 20, 0) : at + 30]!r} (the template changes earlier turns or folds one role "
                "into another); write the Modelfile TEMPLATE by hand"
            )
    if any(
        "{{" in part or '"""' in part
        for part in (*template.prefix.values(), *template.suffix.values(), template.generation)
    ):
        raise ExportError(
            "Ollama export: the chat template's literal text contains '{{' or '\"\"\"', which a Modelfile cannot hold"
        )


def modelfile(gguf_name: str, tokenizer: Any) -> str:
    template = infer_role_template(tokenizer)
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template.go_template()}"""']
    stops = {tokenizer.eos_token, template.suffix["assistant"].strip()} - {"", None}
    lines += [f'PARAMETER stop "{stop}"' for stop in sorted(stops) if '"' not in stop]
    return "\n".join(lines) + "\n"
