"""Merge and export verification probes: held-out examples cut where their task's last answer starts."""

from __future__ import annotations

import json

from ftkit.data.encoding import render_ids
from ftkit.export.verify import probes
from ftkit.recipe import load_recipe
from ftkit.runs import RunDir

THREE_TURNS = [
    {"role": "system", "content": "You are Northwind Goods' support assistant."},
    {"role": "user", "content": "Where is order NW-123456?"},
    {"role": "assistant", "content": "It left our warehouse yesterday."},
    {"role": "user", "content": "When will it arrive?"},
    {"role": "assistant", "content": "Thursday, by 6 pm."},
    {"role": "user", "content": "Can I change the address?"},
    {"role": "assistant", "content": "Yes: send me the new address and I'll update it before it ships."},
]


def test_chat_probes_ask_for_the_last_assistant_turn_of_a_three_turn_conversation(
    write_recipe, tmp_path, tokenizer
) -> None:
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": THREE_TURNS}) + "\n" + json.dumps({"messages": THREE_TURNS[:3]}) + "\n")
    path = write_recipe(
        "chatrun",
        task={"name": "chat"},
        data={"train": str(data), "validation": None, "test": str(data), "max_length": 512, "allow_overlap": True},
    )
    recipe = load_recipe(path)
    run = RunDir(recipe.run_dir)
    run.path.mkdir(parents=True)
    run.recipe.write_text(recipe.to_yaml())

    probe = probes(run.adapter, tokenizer, count=2)

    assert probe.full[0] == render_ids(tokenizer, THREE_TURNS, generation_prompt=False)
    assert probe.prompts[0] == render_ids(tokenizer, THREE_TURNS[:-1], generation_prompt=True)
    prompt = tokenizer.decode(probe.prompts[0])
    assert "Thursday, by 6 pm." in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert "send me the new address" not in prompt
    assert probe.prompts[1] == render_ids(tokenizer, THREE_TURNS[:2], generation_prompt=True)


def test_prompt_completion_probes_end_before_the_completion(write_recipe, tokenizer) -> None:
    recipe = load_recipe(write_recipe("sentimentrun"))
    run = RunDir(recipe.run_dir)
    run.path.mkdir(parents=True)
    run.recipe.write_text(recipe.to_yaml())

    probe = probes(run.adapter, tokenizer, count=3)

    for full, prompt in zip(probe.full, probe.prompts):
        assert full[: len(prompt)] == prompt
        completion = tokenizer.decode(full[len(prompt) :])
        assert completion in (" negative" + tokenizer.eos_token, " positive" + tokenizer.eos_token)
