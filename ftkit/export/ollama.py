"""Ollama: a Modelfile whose TEMPLATE is translated from the trained Jinja chat template, checked to
render test conversations to exactly the same text, with the stop tokens the template ends turns with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ftkit.export import ExportError


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
        return f"{{{{ range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}{self.generation}"


SYSTEM, USER, ASSISTANT = "\x00SYSTEM\x00", "\x00USER\x00", "\x00ASSISTANT\x00"


def infer_role_template(tokenizer: Any) -> RoleTemplate:
    """Read the per-role wrappers off the Jinja template by rendering marker messages, then check them."""

    def render(messages: list[dict[str, str]], generation: bool = False) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    system = [{"role": "system", "content": SYSTEM}]
    user = system + [{"role": "user", "content": USER}]
    full = user + [{"role": "assistant", "content": ASSISTANT}]
    try:
        texts = [render(system), render(user), render(full), render(user, True), render(full[1:])]
    except Exception as error:  # jinja raises on templates that reject these conversations
        raise ExportError(
            f"Ollama export: the chat template cannot render a system/user/assistant conversation: {error}"
        ) from None
    r_system, r_user, r_full, r_generation, r_no_system = texts
    if not (r_user.startswith(r_system) and r_full.startswith(r_user) and r_generation.startswith(r_user)):
        raise ExportError(
            "Ollama export: the chat template is not a per-message template (earlier turns change); "
            "write the Modelfile TEMPLATE by hand"
        )
    blocks = {
        "system": (r_system, SYSTEM),
        "user": (r_user[len(r_system) :], USER),
        "assistant": (r_full[len(r_user) :], ASSISTANT),
    }
    prefix, suffix = {}, {}
    for role, (block, marker) in blocks.items():
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


def _check_translation(template: RoleTemplate, render: Any) -> None:
    """The translated template must reproduce the Jinja one exactly on conversations it was not built from."""
    conversations = [
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
    for conversation in conversations:
        if template.render(conversation) != render(conversation, True):
            raise ExportError(
                "Ollama export: the translated template does not reproduce the chat template on a test "
                "conversation; write the Modelfile TEMPLATE by hand"
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
    if template.default_system is not None:
        lines.append(f'SYSTEM """{template.default_system}"""')
    stops = {tokenizer.eos_token, template.suffix["assistant"].strip()} - {"", None}
    lines += [f'PARAMETER stop "{stop}"' for stop in sorted(stops) if '"' not in stop]
    return "\n".join(lines) + "\n"
