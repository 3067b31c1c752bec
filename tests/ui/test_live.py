"""A run started from the browser's form, watched while it trains, stopped, resumed and finished.

The run is the ordinary `ftkit train` of the tiny model in a background process (about a minute on two
busy cores, hence `slow`; `make test` runs it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from ftkit.runs import RunDir
from ftkit.ui.app import create_app
from tests.live_server import serving
from tests.ui.conftest import TOKEN, shoot

STEPS = 300  # long enough that Stop lands before the end even on idle cores (16 steps did not)
OVERRIDES = f"train.max_steps={STEPS}\ntrain.save_every=2\ntrain.log_every=1"
LOSS = 'svg.chart[data-metric="loss"]'


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "ui-runs"
    root.mkdir()
    with serving(create_app(root, token=TOKEN, recipes=tmp_path), "/api/runs") as url:
        yield url, root


def start(page: Page, url: str, recipe: Path, mode: str) -> None:
    page.goto(url + "/new")
    page.fill("#recipe", str(recipe))
    page.fill("#name", "live")
    page.fill("#overrides", OVERRIDES)
    page.check(f'input[name=mode][value="{mode}"]')
    page.click("#submit")
    expect(page).to_have_url(url + "/run/live")


def points(page: Page) -> int:
    return int(page.locator(LOSS).get_attribute("data-points") or 0)


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_start_watch_stop_resume_finish(page: Page, live: tuple[str, Path], write_recipe: Callable[..., Path]) -> None:
    url, root = live
    recipe = write_recipe("live")
    run = RunDir(root / "live")

    start(page, url, recipe, "new")
    expect(page.locator("#state")).to_have_attribute("data-state", "running", timeout=30_000)
    wait_for(lambda: page.locator(LOSS).count() == 1 and points(page) > 0, 180, "the first loss point")
    first = points(page)
    wait_for(lambda: points(page) > first, 120, "more loss points while training")
    assert page.locator("#state").get_attribute("data-state") == "running"
    shoot(page, "live-running")

    wait_for(lambda: run.last_checkpoint() is not None, 120, "a checkpoint")
    page.click("#stop")
    expect(page.locator("#state")).to_have_attribute("data-state", "interrupted", timeout=60_000)
    kept = run.last_checkpoint()
    assert kept is not None and not run.adapter.exists()
    shoot(page, "live-stopped")

    start(page, url, recipe, "resume")  # `ftkit train --resume` from the kept checkpoint
    expect(page.locator("#state")).to_have_attribute("data-state", "finished", timeout=300_000)
    expect(page.locator("#evaluation tbody tr").first).to_contain_text("accuracy")
    assert f"step {STEPS}" in page.locator(LOSS).inner_html()
    steps = [row["step"] for row in map(json.loads, run.train_log.read_text().splitlines()) if "loss" in row]
    assert steps.count(1) == 1 and steps[-1] == STEPS, f"continued from {kept.name}, not restarted: {steps}"
    shoot(page, "live-finished")
