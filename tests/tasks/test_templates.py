"""Prompt templates are parsed when a recipe is validated, by the rules rendering uses at run time.

Each task declares which fields its templates may and must use (`TaskOptions.templates`); the shared
parser in `tasks/base.py` refuses the rest with a message naming the position or the field.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ftkit.cli import main
from ftkit.errors import RowError
from ftkit.tasks.base import TemplateError, check_template, render, slots

TEXT = slots("text")

REFUSED = {
    "R {text": "the '{' at position 3 is never closed",
    "R } {text}": "a single '}' at position 3 closes nothing",
    "{text.__class__.__mro__}": "{text.__class__.__mro__} at position 1: attribute access (.name) is not allowed",
    "x {text[0]}": "{text[0]} at position 3: index access ([...]) is not allowed",
    "{text!r}": "{text!r} at position 1: conversions (!r, !s, !a) are not allowed",
    "{text:>999999999}": "format specs (':...') are not allowed",
    "{text:{text}}": "a '{' at position 7 inside the field opened at position 1",
    "{} {text}": "{} at position 1: name the field",
    "{0}": "{0} at position 1: name the field",
    "{label}: {text}": "unknown field {label}; this template may use {text}",
    "Classify this review.": "the template does not use {text}, so every example would get the same prompt",
}


@pytest.mark.parametrize("template", list(REFUSED))
def test_bad_templates_are_refused_with_the_reason(template: str) -> None:
    with pytest.raises(TemplateError) as caught:
        check_template(template, TEXT)
    assert REFUSED[template] in str(caught.value)


def test_literal_braces_and_plain_fields_render() -> None:
    assert check_template("{{json}} {text}", TEXT) == ["text"]
    assert render("{{json}} {text}!", {"text": "hi"}, "f:row 1") == "{json} hi!"


def test_rendering_uses_the_same_rules(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="attribute access"):
        render("{text.__class__}", {"text": "x"}, "f:row 1")
    with pytest.raises(RowError, match="f:row 2: the prompt template uses 'text' but the row has no such field"):
        render("{text}", {}, "f:row 2")


@pytest.mark.parametrize(
    "task, key, template, expected",
    [
        ("sentiment", "prompt_template", "Review: {text", "the '{' at position 9 is never closed"),
        ("sentiment", "prompt_template", "Sentiment:", "does not use {text}"),
        ("sentiment", "prompt_template", "{text.__class__.__mro__}", "attribute access"),
        ("qa", "prompt_template", "Q: {question}\nA:", "does not use {context}"),
        ("qa", "prompt_template_no_context", "Q: {question} {context}", "unknown field {context}"),
        ("extract", "prompt_template", "Extract {field_list}.\nJSON:", "does not use {text}"),
    ],
)
def test_validate_catches_template_problems_in_one_line(
    task: str, key: str, template: str, expected: str, tmp_path: Path, capsys
) -> None:
    (tmp_path / "train.jsonl").write_text("{}\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"task:\n  name: {task}\n  {key}: {template!r}\ndata:\n  train: train.jsonl\n".replace("\\n", "\n")
    )
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ftkit: error: {recipe}:3: task.{key}: ") and expected in err and err.count("\n") == 1, err


def test_extract_may_leave_out_its_own_field_list(tmp_path: Path, capsys) -> None:
    (tmp_path / "train.jsonl").write_text("{}\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "task:\n  name: extract\n  prompt_template: 'Message: {text}\\nJSON:'\n"
        "data:\n  train: train.jsonl\n  test: train.jsonl\n"
    )
    assert main(["validate", str(recipe)]) == 0
