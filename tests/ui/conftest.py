"""A runs root built by the real code paths, and `ftkit ui` serving it on a loopback port.

Two tiny runs are trained and evaluated by `ftkit train` (one of them nested like a sweep's trial, which
the catalog must find); two more are cut from the first the way a run is left behind when training
stops: without its adapter (checkpoints kept: interrupted) and with only its recipe (failed).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from ftkit.cli import main
from ftkit.ui.app import create_app
from tests.conftest import cut_sentiment_files, write_tiny_recipe
from tests.live_server import serving

TOKEN = "ui-test-token"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def ui_root(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("ui")
    files = cut_sentiment_files(folder)
    trained: dict[str, dict[str, dict[str, Any]]] = {
        "runs/sentiment-r4": {"train": {"max_steps": 16, "save_every": 8, "log_every": 2}},  # fixes some, breaks some
        "runs/sweeps/lr/trials/001": {"train": {"learning_rate": 3e-3}},
    }
    for rel, sections in trained.items():
        recipe = write_tiny_recipe(folder, tiny_model_dir, files, rel.replace("/", "-"), **sections)
        assert main(["train", str(recipe), f"output.dir={folder / rel}"]) == 0
    first = folder / "runs/sentiment-r4"
    interrupted = folder / "runs/stopped"
    shutil.copytree(first, interrupted, ignore=shutil.ignore_patterns("adapter", "metrics.json", "*.png"))
    (folder / "runs/broken").mkdir()
    shutil.copy(first / "recipe.yaml", folder / "runs/broken/recipe.yaml")
    return folder / "runs"


@pytest.fixture(scope="session")
def ui_url(ui_root: Path) -> Iterator[str]:
    with serving(create_app(ui_root, token=TOKEN), "/api/runs") as url:
        yield url


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium driven by Playwright (`make test` installs it when missing)."""
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: `apt-get install chromium` (make test does)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"script errors in the page: {errors}"


def shoot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
