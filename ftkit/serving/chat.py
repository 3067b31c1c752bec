"""`ftkit chat`: talk to a fine-tuned adapter (or any chat model folder) in the terminal.

Answers stream as they are generated, the conversation is kept and rendered with the tokenizer's
chat template each turn, and Ctrl-C stops one answer without leaving the chat.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from ftkit.errors import FtkitError
from ftkit.serving import runtime
from ftkit.serving.batcher import Sampling
from ftkit.serving.targets import resolve_targets

HELP = """commands: /system TEXT  set the system prompt (empty TEXT removes it)
          /reset        forget the conversation (the system prompt stays)
          /exit         quit (or Ctrl-D); Ctrl-C stops an answer"""


def run_chat(
    target: Path, *, system: str | None, max_new_tokens: int, temperature: float, quantization: str | None
) -> int:
    """Load the target, then read a line, answer it, repeat until /exit or end of input."""
    if max_new_tokens < 1 or temperature < 0:
        raise FtkitError(
            f"--max-new-tokens must be at least 1 (got {max_new_tokens}) and --temperature at least 0 "
            f"(got {temperature})"
        )
    found, base = resolve_targets([target], quantization)
    print(f"loading {base.source} ({base.quantization}) ...", file=sys.stderr)
    deployment = runtime.load(found, base)
    name = deployment.names[-1]  # the adapter, or the base for a model folder
    conversation = runtime.Conversation(system=system)
    print(f"chatting with {name} (context {deployment.context} tokens)\n{HELP}", file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print("\n(/exit or Ctrl-D quits)", file=sys.stderr)
            continue
        if line.strip() == "/exit":
            return 0
        if line.startswith("/"):
            command(line, conversation)
        elif line.strip():
            answer(
                deployment, name, conversation, line, Sampling(max_new_tokens=max_new_tokens, temperature=temperature)
            )


def command(line: str, conversation: runtime.Conversation) -> None:
    """Apply one /command to the conversation."""
    word, _, rest = line.partition(" ")
    if word == "/reset":
        conversation.reset()
        print("(conversation cleared)", file=sys.stderr)
    elif word == "/system":
        conversation.system = rest.strip() or None
        print(
            f"(system prompt {'set' if conversation.system else 'removed'}; it heads the conversation from the next "
            "answer on)",
            file=sys.stderr,
        )
    else:
        print(HELP, file=sys.stderr)


def answer(
    deployment: runtime.Deployment, name: str, conversation: runtime.Conversation, text: str, sampling: Sampling
) -> None:
    """Stream one reply to stdout and keep it in the conversation; Ctrl-C keeps what was said so far."""
    conversation.add("user", text)
    prompt = runtime.prompt_ids(deployment.tokenizer, conversation.messages())
    room = deployment.context - len(prompt)
    if room < 1:
        conversation.turns.pop()
        print(
            f"(the conversation is {len(prompt)} tokens, the model's context is {deployment.context}: /reset to "
            "start over)",
            file=sys.stderr,
        )
        return
    stream = deployment.reply(name, prompt, replace(sampling, max_new_tokens=min(sampling.max_new_tokens, room)))
    print("assistant> ", end="", flush=True)
    stopped, pieces = False, iter(stream)
    try:
        for piece in pieces:
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        stopped = True
    finally:
        pieces.close()  # a Ctrl-C outside the generator leaves it suspended: closing stops generation
    reply = stream.reply
    conversation.add("assistant", reply.text)
    ending = " [stopped]" if stopped else " [max tokens reached]" if reply.finish_reason == "length" else ""
    print(ending)
    print(
        f"({reply.completion_tokens} tokens in {reply.seconds:.1f} s, {reply.tokens_per_s:.1f} tokens/s)",
        file=sys.stderr,
    )
