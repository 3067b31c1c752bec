"""The HTML of each page, rendered on the server from the run's own files; no template engine.

Every value from a file is escaped (`html.escape`) where it enters the page. The pages need no
script to be read; `static/ui.js` adds sorting and filtering, the live charts and the chat.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from ftkit.ui.catalog import Interval, RunSummary, interval_of
from ftkit.ui.examples import KINDS, PAGE, Page, Row

STATE_MARK = {"running": "●", "finished": "✓", "interrupted": "‖", "failed": "✗"}


def e(value: Any) -> str:
    return escape(str(value), quote=True)


def url(rel: str, tail: str = "") -> str:
    return f"/run/{quote(rel)}{tail}"


def layout(title: str, body: str, token: str, active: str = "") -> str:
    links = [("/", "Runs"), ("/compare", "Compare"), ("/new", "Start a run")]
    nav = "".join(f'<a href="{h}"{" class=on" if t == active else ""}>{t}</a>' for h, t in links)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta name="ftkit-token" content="{e(token)}"><title>{e(title)} · ftkit</title>'
        '<link rel=stylesheet href="/static/ui.css"><script defer src="/static/ui.js"></script></head>'
        f"<body><header><b>ftkit</b> {nav}</header><main><h1>{e(title)}</h1>{body}</main></body></html>"
    )


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def interval(i: Interval | None) -> str:
    if i is None:
        return "-"
    ci = f" <small>[{fmt(i.low)}, {fmt(i.high)}]</small>" if i.low is not None and i.high is not None else ""
    return f"{fmt(i.value)}{ci}"


def significance(run: RunSummary) -> str:
    if run.significant is None or run.difference is None:
        return "-"
    if not run.significant:
        return f'<span class=ns title="p = {fmt(run.p_value, 3)}">n.s.</span>'
    better = run.difference > 0
    return (
        f'<span class={"up" if better else "down"} title="p = {fmt(run.p_value, 3)}">{"▲" if better else "▼"}*</span>'
    )


def table(header: Sequence[str], rows: Iterable[Sequence[str]], attrs: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def runs_page(runs: list[RunSummary], token: str) -> str:
    rows = []
    for r in runs:
        steps = "-" if r.steps is None else f"{r.steps}" + (f" / {r.max_steps}" if r.max_steps else "")
        primary = f"{e(r.primary)}: " if r.primary else ""
        rows.append(
            [
                f'<a href="{url(r.rel)}">{e(r.rel)}</a>',
                f'<span class="state {r.state}">{STATE_MARK[r.state]} {r.state}</span>',
                e(r.task),
                f"<small>{e(r.model)}</small>",
                e(r.quantization),
                steps,
                f"{primary}{interval(r.base)}" if r.base else "-",
                interval(r.adapter),
                significance(r),
            ]
        )
    header = ["run", "state", "task", "base model", "quant", "steps", "base [95% CI]", "adapter [95% CI]", "sig."]
    controls = (
        '<p class=controls><input id=filter placeholder="filter runs (name, task, model)" size=40> '
        "<select id=state-filter><option value=''>every state</option>"
        + "".join(f"<option>{s}</option>" for s in STATE_MARK)
        + "</select> <small>click a column to sort; ▲* / ▼*: adapter significantly better / worse (p &lt; 0.05), "
        "n.s.: not significant</small></p>"
    )
    empty = "" if runs else "<p>No run directories (folders with a recipe.yaml) below the runs root yet.</p>"
    return layout(
        f"Runs ({len(runs)})", controls + table(header, rows, "id=runs class=sortable") + empty, token, "Runs"
    )


def metrics_table(metrics: dict[str, Any]) -> str:
    systems = list(metrics.get("systems") or {})
    names = list(metrics["systems"][systems[0]].get("metrics") or {}) if systems else []
    rows = [[e(name), *(interval(interval_of(metrics, system, name)) for system in systems)] for name in names]
    head = (
        f"<p>{e(metrics.get('examples'))} held-out examples ({e(metrics.get('split'))}); 95% bootstrap intervals.</p>"
    )
    evaluation = table(["metric", *map(e, systems)], rows, "id=evaluation")
    tests = table(
        ["system", "metric", "difference", "p-value", "test", "significant at 0.05"],
        (
            [
                e(c.get("system")),
                e(c.get("metric")),
                f"{c['difference']:+.3f}" if isinstance(c.get("difference"), (int, float)) else "-",
                fmt(c.get("p_value"), 4),
                e(c.get("test")),
                "<b>yes</b>" if c.get("significant") else "no",
            ]
            for c in metrics.get("comparisons") or []
            if isinstance(c, dict)
        ),
        "id=comparisons",
    )
    notes = "".join(f"<li>{e(w)}</li>" for w in metrics.get("warnings") or [])
    return head + (f"<ul class=warn>{notes}</ul>" if notes else "") + evaluation + "<h3>Paired tests</h3>" + tests


def run_page(
    run: RunSummary,
    *,
    token: str,
    metrics: dict[str, Any] | None,
    recipe_text: str,
    plots: list[str],
    lineage: dict[str, Any] | None,
    log_tail: str | None,
    stoppable: bool,
) -> str:
    links = f'<a href="{url(run.rel, "/examples")}">Examples</a> · <a href="{url(run.rel, "/chat")}">Chat</a>'
    stop = (
        f'<form method=post action="{url(run.rel, "/stop")}" class=inline><input type=hidden name=token '
        f'value="{e(token)}"><button id=stop>Stop</button></form>'
        if stoppable
        else ""
    )
    parts = [
        f'<p><span id=state class="state {run.state}" data-state="{run.state}">'
        f"{STATE_MARK[run.state]} {run.state}</span> · task {e(run.task)} · base {e(run.model)} "
        f"({e(run.quantization)}) · {links} {stop}</p>",
        f'<h2>Training</h2><div id=charts data-run="{e(run.rel)}" data-state="{run.state}"></div>',
    ]
    training = (metrics or {}).get("training")
    if isinstance(training, dict) and training:
        parts.append(
            "<p class=facts>"
            + " · ".join(f"{e(k)}: {e(v)}" for k, v in training.items() if not isinstance(v, (dict, list)))
            + "</p>"
        )
    if log_tail is not None and run.state != "finished":
        parts.append(f"<details {'open' if run.state == 'failed' else ''}><summary>Process output</summary>")
        parts.append(f"<pre id=log>{e(log_tail)}</pre></details>")
    parts.append("<h2>Evaluation</h2>")
    parts.append(metrics_table(metrics) if metrics else "<p id=evaluation-missing>Not evaluated yet.</p>")
    if plots:
        parts.append("<h2>Plots</h2><div class=plots>")
        parts += [f'<img alt="{e(p)}" src="/file/{quote(run.rel + "/" + p)}">' for p in plots]
        parts.append("</div>")
    parts.append(
        f"<h2>Resolved recipe</h2><details><summary>recipe.yaml</summary><pre>{e(recipe_text)}</pre></details>"
    )
    parts.append(
        f'<h2>Pre-flight report</h2><details id=preflight data-src="{url(run.rel, "/preflight")}">'
        "<summary>ftkit data (computed when opened: loads the tokenizer and the data, no weights)</summary>"
        "<pre>…</pre></details>"
    )
    if lineage:
        parts.append(
            "<h2>Lineage</h2>" + table(["", ""], ([e(k), _value(v)] for k, v in lineage.items()), "id=lineage")
        )
    return layout(run.rel, "".join(parts), token)


def _value(value: Any) -> str:
    if isinstance(value, dict):
        fields = "<br>".join(f"<small>{e(k)}</small>: {_value(v)}" for k, v in value.items())
        return fields if len(value) <= 8 else f"<details><summary>{len(value)} fields</summary>{fields}</details>"
    return e(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def _shown(value: Any) -> str:
    """An input, reference or prediction: a conversation as its turns, text as text, anything else as JSON."""
    if isinstance(value, list) and all(isinstance(t, dict) and "role" in t for t in value):
        return "".join(
            f'<div class="turn {e(t["role"])}"><b>{e(t["role"])}</b> {e(t.get("content", ""))}</div>' for t in value
        )
    if isinstance(value, str):
        return f"<pre>{e(value)}</pre>"
    return f"<pre>{e(json.dumps(value, ensure_ascii=False, indent=1))}</pre>"


def _example(row: Row) -> list[str]:
    cells = [f"<small>{e(row.where)}</small>", _shown(row.input), _shown(row.reference)]
    cells += [_shown(p) for p in row.predictions.values()]
    cells.append(f'<span class="kind">{e(row.kind or "-")}</span>')
    return cells


def examples_page(run: RunSummary, result: Page, kind: str, query: str, number: int, token: str) -> str:
    def link(k: str, label: str) -> str:
        on = " class=on" if k == kind else ""
        return f'<a{on} href="{url(run.rel, "/examples")}?{urlencode({"kind": k, "q": query})}">{label}</a>'

    filters = [link("all", "all")] + [link(k, f"{k} ({result.counts[k]})") for k in KINDS]
    note = (
        ""
        if result.scored
        else "<p class=warn>This predictions.jsonl records no per-example scores (written before ftkit 0.2.0): "
        "fixed / broken cannot be told apart; re-run <code>ftkit eval</code> to write them.</p>"
    )
    search = (
        f'<form method=get class=controls><input type=hidden name=kind value="{e(kind)}">'
        f'<input name=q id=search value="{e(query)}" placeholder="search input, reference, predictions" size=40>'
        "<button>Search</button></form>"
    )
    shown_to = number * PAGE + len(result.rows)
    first = number * PAGE + 1 if result.rows else 0
    count = f"<p id=matched>{result.matched} examples match; showing {first}–{shown_to}.</p>"
    pager = ""
    if shown_to < result.matched:
        pager = f'<p><a href="?{urlencode({"kind": kind, "q": query, "page": number + 1})}">next page</a></p>'
    header = ["where", "input", "reference", *map(e, result.systems), "kind"]
    body = (
        f'<p><a href="{url(run.rel)}">← run</a> · '
        + " · ".join(filters)
        + "</p>"
        + note
        + search
        + count
        + table(header, (_example(r) for r in result.rows), "id=examples")
        + pager
    )
    return layout(f"Examples of {run.rel}", body, token)


def compare_page(runs: list[RunSummary], chosen: list[str], text: str | None, error: str | None, token: str) -> str:
    boxes = "".join(
        f'<label><input type=checkbox name=run value="{e(r.rel)}"{" checked" if r.rel in chosen else ""}> '
        f"{e(r.rel)}</label>"
        for r in runs
        if r.base is not None
    )
    parts = [
        f"<form method=get id=pick class=picklist>{boxes or 'No evaluated runs yet.'}<button>Compare</button></form>"
    ]
    if error:
        parts.append(f"<p class=error>{e(error)}</p>")
    if text:
        bars = [r for r in runs if r.rel in chosen]
        metric = next((r.primary for r in bars if r.primary), "primary metric")
        parts.append(f"<h2>ftkit compare</h2><pre id=compare>{e(text)}</pre><h2>{e(metric)}, 95% CI</h2>")
        parts.append(bar_chart(bars))
    return layout("Compare runs", "".join(parts), token, "Compare")


def bar_chart(runs: list[RunSummary]) -> str:
    """Base and adapter bars with CI whiskers per run, as inline SVG (no script, no library)."""
    width, height, pad = 640, 260, 40
    shown = [(r, name, i) for r in runs for name, i in (("base", r.base), ("adapter", r.adapter)) if i]
    top = max([1e-9, *(max(i.value, i.high or i.value) for _, _, i in shown)])
    slot = (width - 2 * pad) / max(1, len(runs))
    bar = slot / 3 - 4

    def y(value: float) -> float:
        return height - pad - (value / top) * (height - 2 * pad)

    out = [f'<svg id=bars viewBox="0 0 {width} {height}" width={width} height={height} role=img>']
    for r, name, i in shown:
        x = pad + runs.index(r) * slot + (name == "adapter") * slot / 3 + slot / 6
        title = f"<title>{e(r.rel)} {name}: {fmt(i.value)}</title>"
        out.append(
            f'<rect class="{name}" x="{x:.1f}" y="{y(i.value):.1f}" width="{bar:.1f}" '
            f'height="{height - pad - y(i.value):.1f}">{title}</rect>'
            f'<text x="{x + 2:.1f}" y="{y(i.value) - 3:.1f}">{fmt(i.value)}</text>'
        )
        if i.low is not None and i.high is not None:
            mid, low, high = x + bar / 2, y(i.low), y(i.high)
            out.append(
                f'<path class=ci d="M{mid:.1f} {low:.1f}V{high:.1f}'
                f'M{mid - 5:.1f} {low:.1f}h10M{mid - 5:.1f} {high:.1f}h10"/>'
            )
    for index, r in enumerate(runs):
        center = pad + index * slot + slot / 2
        out.append(f'<text x="{center:.1f}" y="{height - pad + 16}" text-anchor=middle>{e(r.rel)}</text>')
    out.append(f'<text x="{pad}" y="16">0 – {fmt(top)}; grey base, blue adapter</text></svg>')
    return "".join(out)


def start_page(token: str, values: dict[str, str], problems: Sequence[str], recipes: Sequence[str]) -> str:
    errors = "".join(f"<li>{e(p)}</li>" for p in problems)

    def field(name: str, label: str, hint: str, options: Sequence[str] = ()) -> str:
        value = e(values.get(name, ""))
        listed = f" list={name}-list" if options else ""
        box = f'<input name={name} id={name} size=60 value="{value}" placeholder="{e(hint)}"{listed}>'
        choices = "".join(f'<option value="{e(option)}">' for option in options)
        return (
            f"<label>{label}<br>{box}</label>"
            + (f"<datalist id={name}-list>{choices}</datalist>" if options else "")
            + "<br>"
        )

    mode = values.get("mode", "new")
    modes = "".join(
        f"<label><input type=radio name=mode value={m}{' checked' if m == mode else ''}> {m}</label> "
        for m in ("new", "overwrite", "resume")
    )
    body = (
        (f"<ul class=error id=problems>{errors}</ul>" if errors else "")
        + f'<form method=post id=start><input type=hidden name=token value="{e(token)}">'
        + field("recipe", "Recipe file (below the folder <code>ftkit ui</code> started in)", "recipes/x.yaml", recipes)
        + field("name", "Run name (the run goes to &lt;runs root&gt;/NAME)", "sentiment-r8")
        + "<label>Overrides, one KEY=VALUE per line<br><textarea name=overrides id=overrides rows=5 cols=60 "
        + f'placeholder="train.max_steps=20&#10;adapter.r=8">{e(values.get("overrides", ""))}</textarea></label><br>'
        + f"<p>{modes}</p><button id=submit>Validate and start</button></form>"
        + "<p><small>The recipe is validated first; training then runs as <code>ftkit train</code> in the "
        "background and its page shows the progress. Stop keeps the completed checkpoints: start again with "
        "<i>resume</i>.</small></p>"
    )
    return layout("Start a run", body, token, "Start a run")


def chat_page(run: RunSummary, names: list[str], token: str) -> str:
    columns = "".join(
        f'<div class=col><h3>{e(n)}</h3><div class=thread data-system="{e(n)}"></div></div>' for n in names
    )
    body = (
        f'<p><a href="{url(run.rel)}">← run</a> · the base model and this run\'s adapter answer the same conversation, '
        "one after the other (greedy, streamed). The first message loads the model.</p>"
        f'<div id=chat data-run="{e(run.rel)}" class=cols>{columns}</div>'
        '<form id=say><textarea id=message rows=2 cols=70 placeholder="Write a message"></textarea>'
        "<button id=send>Send</button> <button type=button id=reset>Reset</button> <span id=chat-status></span></form>"
    )
    return layout(f"Chat with {run.rel}", body, token)


def error_page(status: int, message: str, token: str) -> str:
    return layout(f"{status}", f"<p class=error>{e(message)}</p><p><a href='/'>runs</a></p>", token)
