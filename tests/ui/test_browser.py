"""The dashboard in a real browser (Playwright driving Debian's headless Chromium) over real tiny runs.

Each page is screenshotted into test-artifacts/ui/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.ui.conftest import shoot


def report_lists(report: Path, kind: str) -> tuple[int, list[str]]:
    """How many examples report.md says the adapter `kind` (fixed / broke), and the `where`s it lists."""
    text = report.read_text(encoding="utf-8")
    section = re.search(rf"## Examples adapter {kind} \((\d+) in all\)\n\n(.*?)(?=\n## |\Z)", text, re.S)
    assert section, f"no '{kind}' section in {report}"
    return int(section.group(1)), re.findall(r"^- `([^`]+)`", section.group(2), re.M)


def test_runs_page_lists_every_run_with_its_state_sortable_and_filterable(page: Page, ui_url: str) -> None:
    page.goto(ui_url + "/")
    rows = page.locator("#runs tbody tr")
    expect(rows).to_have_count(4)
    states = {
        rows.nth(i).locator("td").nth(0).inner_text(): rows.nth(i).locator("td").nth(1).inner_text() for i in range(4)
    }
    assert {k: v.split()[-1] for k, v in states.items()} == {
        "broken": "failed",
        "sentiment-r4": "finished",
        "stopped": "interrupted",
        "sweeps/lr/trials/001": "finished",
    }
    finished = page.locator("#runs tbody tr", has_text="sentiment-r4")
    expect(finished.locator("td").nth(6)).to_contain_text("accuracy")  # base [CI]
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", finished.locator("td").nth(7).inner_text())
    shoot(page, "runs")
    page.locator("#runs th", has_text="state").click()
    assert page.locator("#runs tbody tr").first.locator("td").nth(1).inner_text().endswith("failed")
    page.fill("#filter", "sweeps")
    expect(page.locator("#runs tbody tr:visible")).to_have_count(1)
    page.fill("#filter", "")
    page.select_option("#state-filter", "finished")
    expect(page.locator("#runs tbody tr:visible")).to_have_count(2)


def test_run_page_shows_curves_evaluation_plots_recipe_and_lineage(page: Page, ui_url: str, ui_root: Path) -> None:
    page.goto(ui_url + "/")
    page.click("text=sentiment-r4")
    expect(page.locator("#state")).to_have_text(re.compile("finished"))
    expect(page.locator("#evaluation tbody tr").first).to_contain_text("accuracy")
    expect(page.locator("#comparisons")).to_contain_text("McNemar")
    loss = page.locator('svg.chart[data-metric="loss"]')
    logged = [row for row in map(json.loads, (ui_root / "sentiment-r4" / "train_log.jsonl").open()) if "loss" in row]
    expect(loss).to_have_attribute("data-points", str(len(logged)))  # every logged loss is a point
    assert len(logged) >= 8  # max_steps 16, log_every 2
    for plot in ("metrics.png", "loss_curves.png", "confusion_adapter.png"):
        loaded = "name => [...document.images].some(i => i.alt === name && i.complete && i.naturalWidth > 0)"
        page.wait_for_function(loaded, arg=plot, timeout=10_000)
    expect(page.locator("#lineage")).to_contain_text("base")
    page.click("#preflight summary")
    expect(page.locator("#preflight pre")).to_contain_text("max_length 96 tokens", timeout=60_000)
    shoot(page, "run")


def test_examples_filtered_to_broken_are_the_rows_report_md_lists(page: Page, ui_url: str, ui_root: Path) -> None:
    report = ui_root / "sentiment-r4" / "report.md"
    for kind, word in (("broken", "broke"), ("fixed", "fixed")):
        total, listed = report_lists(report, word)
        assert total > 0, f"the fixture run {word} no example: the comparison would prove nothing"
        page.goto(ui_url + "/run/sentiment-r4/examples")
        page.click(f"text={kind} ({total})")
        rows = page.locator("#examples tbody tr")
        expect(rows).to_have_count(total)
        wheres = [rows.nth(i).locator("td").first.inner_text() for i in range(total)]
        assert wheres[: len(listed)] == listed, (kind, wheres, listed)
        assert all(rows.nth(i).locator(".kind").inner_text() == kind for i in range(total))
        if kind == "broken":
            shoot(page, "examples-broken")
    page.goto(ui_url + "/run/sentiment-r4/examples")
    page.fill("#search", "zzzz-no-such-text")
    page.press("#search", "Enter")
    expect(page.locator("#matched")).to_contain_text("0 examples match")


def test_compare_two_runs_shows_the_compare_table_and_bars_with_cis(page: Page, ui_url: str) -> None:
    page.goto(ui_url + "/compare")
    page.check('input[value="sentiment-r4"]')
    page.check('input[value="sweeps/lr/trials/001"]')
    page.click("#pick button")
    table = page.locator("#compare")
    expect(table).to_contain_text("primary metric: accuracy")
    expect(table).to_contain_text("lr")  # the runs differ in learning rate: the column is shown
    assert page.locator("#bars rect").count() == 4
    assert page.locator("#bars path.ci").count() == 4
    shoot(page, "compare")


def test_chat_streams_the_base_and_the_adapter_side_by_side(page: Page, ui_url: str) -> None:
    page.goto(ui_url + "/run/sentiment-r4/chat")
    columns = page.locator(".thread")
    expect(columns).to_have_count(2)
    assert [c.get_attribute("data-system") for c in columns.all()] == ["base", "sentiment-r4"]
    page.fill("#message", "Is this review positive? 'Great value.'")
    page.click("#send")
    for column in columns.all():
        expect(column.locator(".turn.user")).to_have_text("Is this review positive? 'Great value.'")
        expect(column.locator(".turn.assistant small")).to_contain_text("tokens/s", timeout=60_000)
    shoot(page, "chat")
    page.click("#reset")
    expect(page.locator(".turn")).to_have_count(0)
