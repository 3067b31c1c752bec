"""`ftkit chat`: the terminal loop driven through `ftkit.cli.main` with stdin replaced, and the
conversation, prompt and reply-stream pieces it is built from."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from ftkit.cli import main
from ftkit.serving import runtime
from ftkit.serving.batcher import Sampling
from ftkit.serving.targets import resolve_targets
from tests.tiny_adapters import make_run

OTHER_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return make_run(tmp_path_factory.mktemp("chat"), tiny_model_dir, "helper", seed=3)


@pytest.fixture
def prompts(monkeypatch: pytest.MonkeyPatch) -> list[list[dict[str, str]]]:
    """Every conversation the chat renders into a prompt (the real rendering still runs)."""
    seen: list[list[dict[str, str]]] = []
    render = runtime.prompt_ids

    def recording(tokenizer, messages):
        seen.append([dict(m) for m in messages])
        return render(tokenizer, messages)

    monkeypatch.setattr(runtime, "prompt_ids", recording)
    return seen


def chat(monkeypatch: pytest.MonkeyPatch, target: Path, lines: str, *extra: str) -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    return main(["chat", str(target), "--max-new-tokens", "6", *extra])


def test_history_system_prompt_and_reset(monkeypatch, capsys, run_dir: Path, prompts) -> None:
    code = chat(monkeypatch, run_dir, "Hello there\nAnd again\n/system Be brief.\nThird\n/reset\nFourth\n")
    assert code == 0
    out, err = capsys.readouterr()
    assert out.count("assistant> ") == 4
    first_answer = prompts[1][1]
    assert prompts[0] == [{"role": "user", "content": "Hello there"}]
    assert (
        prompts[1][0] == prompts[0][0]
        and first_answer["role"] == "assistant"
        and prompts[1][2]["content"] == "And again"
    )
    assert first_answer["content"] and first_answer["content"] in out, "the streamed answer is what the history keeps"
    assert prompts[2][0] == {"role": "system", "content": "Be brief."} and prompts[2][1:4] == prompts[1]
    assert prompts[2][-1] == {"role": "user", "content": "Third"}, "the system prompt heads the kept history"
    assert prompts[3] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Fourth"}]
    assert err.count("tokens/s") == 4 and "chatting with helper" in err


def test_system_option_unknown_command_and_exit(monkeypatch, capsys, run_dir: Path, prompts) -> None:
    assert chat(monkeypatch, run_dir, "/help\nHi\n/exit\nnot read\n", "--system", "Answer in French.") == 0
    assert prompts == [[{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"}]]
    assert "/reset" in capsys.readouterr().err


def test_ctrl_c_stops_the_answer_but_not_the_chat(monkeypatch, capsys, run_dir: Path, prompts) -> None:
    class InterruptOnFirstToken(io.StringIO):
        """A terminal where Ctrl-C is pressed as the first answer's first token is printed."""

        interrupted = False

        def write(self, text: str) -> int:
            if text and self.getvalue().endswith("assistant> ") and not self.interrupted:
                self.interrupted = True
                raise KeyboardInterrupt
            return super().write(text)

    screen = InterruptOnFirstToken()
    monkeypatch.setattr(sys, "stdout", screen)
    assert chat(monkeypatch, run_dir, "First\nSecond\n", "--max-new-tokens", "20") == 0
    assert screen.getvalue().count("[stopped]") == 1 and screen.getvalue().count("assistant> ") == 2
    assert [m["role"] for m in prompts[1]] == ["user", "assistant", "user"] and prompts[1][2]["content"] == "Second"
    assert capsys.readouterr().err.count("tokens/s") == 2


def test_a_conversation_longer_than_the_context_asks_for_reset(monkeypatch, capsys, run_dir: Path, prompts) -> None:
    assert chat(monkeypatch, run_dir, "word " * 600 + "\n/reset\nShort\n") == 0
    err = capsys.readouterr().err
    assert "the model's context is 512: /reset to start over" in err
    assert prompts[-1] == [{"role": "user", "content": "Short"}], "the too-long turn was not kept"


def test_chat_with_a_model_folder(monkeypatch, capsys, tiny_model_dir: Path) -> None:
    assert chat(monkeypatch, tiny_model_dir, "Hi\n") == 0
    assert "chatting with base" in capsys.readouterr().err


def test_a_different_chat_template_than_trained_is_reported(
    monkeypatch, caplog, tmp_path: Path, tiny_model_dir: Path
) -> None:
    run = make_run(tmp_path, tiny_model_dir, "templated", seed=4, trained_template=OTHER_TEMPLATE)
    assert chat(monkeypatch, run, "") == 0  # the CLI's log handler prints warnings on stderr; pytest captures them here
    assert "chat template differs from the one the adapter was trained with" in caplog.text


@pytest.mark.parametrize(
    ("files", "message"),
    [([], "adapter folder (adapter_config.json)"), (["recipe.yaml"], "run directory without a finished adapter")],
)
def test_a_folder_that_is_no_target_is_one_error_line(monkeypatch, capsys, tmp_path: Path, files, message) -> None:
    for name in files:
        (tmp_path / name).write_text("model: {}\n")
    assert chat(monkeypatch, tmp_path, "") == 2
    err = capsys.readouterr().err
    assert err.startswith("ftkit: error: ") and err.count("\n") == 1 and message in err and str(tmp_path) in err


def test_conversation_messages_and_prompt_after_reset(tokenizer) -> None:
    conversation = runtime.Conversation(system="Be kind.")
    conversation.add("user", "What is a llama?")
    conversation.add("assistant", "An animal.")
    conversation.add("user", "Where does it live?")
    before = tokenizer.decode(runtime.prompt_ids(tokenizer, conversation.messages()))
    assert before.index("Be kind.") < before.index("What is a llama?") < before.index("Where does it live?")
    assert before.rstrip().endswith("assistant"), "ends with the generation prompt"
    conversation.reset()
    conversation.add("user", "Hello")
    after = tokenizer.decode(runtime.prompt_ids(tokenizer, conversation.messages()))
    assert "llama" not in after and "Be kind." in after and "Hello" in after


def test_a_reply_stream_stops_when_cancelled(tiny_model_dir: Path) -> None:
    deployment = runtime.load(*resolve_targets([tiny_model_dir]))
    prompt = runtime.prompt_ids(deployment.tokenizer, [{"role": "user", "content": "Hi"}])
    stream = deployment.reply("base", prompt, Sampling(max_new_tokens=200))
    pieces = iter(stream)
    next(pieces)
    stream.cancel()
    list(pieces)
    assert 0 < stream.reply.completion_tokens < 200
    whole = deployment.reply("base", prompt, Sampling(max_new_tokens=5))
    assert "".join(whole) == whole.reply.text and whole.reply.completion_tokens == 5 and whole.reply.tokens_per_s > 0
