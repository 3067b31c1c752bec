// ftkit ui: sorting and filtering, live training charts (polling train_log.jsonl), the pre-flight
// report on demand, and the chat (OpenAI-shaped server-sent events). No library, nothing fetched
// from anywhere but this server.
"use strict";

const token = () => document.querySelector('meta[name="ftkit-token"]').content;
const runUrl = (rel, tail) => "/api/run/" + rel.split("/").map(encodeURIComponent).join("/") + tail;

function sortable(table) {
  table.querySelectorAll("th").forEach((th, column) => {
    th.addEventListener("click", () => {
      const body = table.tBodies[0];
      const up = th.dataset.dir !== "up";
      table.querySelectorAll("th").forEach((h) => delete h.dataset.dir);
      th.dataset.dir = up ? "up" : "down";
      const key = (row) => {
        const text = row.cells[column].textContent.trim().replace(/^[^\p{L}\p{N}.-]+/u, "");
        const number = parseFloat(text.replace(/^[^0-9.-]*/, ""));
        return Number.isNaN(number) ? text.toLowerCase() : number;
      };
      const rows = Array.from(body.rows).sort((a, b) => {
        const x = key(a), y = key(b);
        const order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : typeof x === "number" ? -1 : 1;
        return up ? order : -order;
      });
      rows.forEach((row) => body.appendChild(row));
    });
  });
}

function runFilter() {
  const text = document.getElementById("filter");
  const state = document.getElementById("state-filter");
  if (!text) return;
  const apply = () => {
    const words = text.value.toLowerCase();
    document.querySelectorAll("#runs tbody tr").forEach((row) => {
      const okText = !words || row.textContent.toLowerCase().includes(words);
      const okState = !state.value || row.cells[1].textContent.includes(state.value);
      row.hidden = !(okText && okState);
    });
  };
  text.addEventListener("input", apply);
  state.addEventListener("change", apply);
}

// --- live charts ---------------------------------------------------------------------------------

const CHARTS = [
  ["loss", "training loss"],
  ["learning_rate", "learning rate"],
  ["eval_loss", "validation loss"],
  ["tokens_per_s", "tokens/s"],
];

function drawChart(box, key, title, rows) {
  // tokens/s from training rows only: evaluation rows repeat it at their step
  const training = (r) => key !== "tokens_per_s" || "loss" in r;
  const points = rows.filter((r) => typeof r[key] === "number" && typeof r.step === "number" && !("train_loss" in r) && training(r));
  const w = 300, h = 160, pad = 34;
  const svg = ['<svg viewBox="0 0 ' + w + " " + h + '" class="chart" data-metric="' + key + '" data-points="' + points.length + '">'];
  svg.push('<text x="' + pad + '" y="12">' + title + (points.length ? "" : " (no points yet)") + "</text>");
  if (points.length) {
    const xs = points.map((p) => p.step), ys = points.map((p) => p[key]);
    const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-12);
    const X = (v) => pad + ((v - x0) / (x1 - x0)) * (w - pad - 8);
    const Y = (v) => h - 20 - ((v - y0) / (y1 - y0)) * (h - 40);
    svg.push('<polyline points="' + points.map((p) => X(p.step).toFixed(1) + "," + Y(p[key]).toFixed(1)).join(" ") + '"/>');
    points.forEach((p) => svg.push('<circle r="2" cx="' + X(p.step).toFixed(1) + '" cy="' + Y(p[key]).toFixed(1) + '"><title>step ' + p.step + ": " + p[key] + "</title></circle>"));
    svg.push('<text x="2" y="' + (Y(y1) + 4) + '">' + y1.toPrecision(3) + "</text>");
    svg.push('<text x="2" y="' + (Y(y0) + 4) + '">' + y0.toPrecision(3) + "</text>");
    svg.push('<text x="' + pad + '" y="' + (h - 4) + '">step ' + x0 + "</text>");
    svg.push('<text x="' + (w - 8) + '" y="' + (h - 4) + '" text-anchor="end">step ' + x1 + "</text>");
  }
  svg.push("</svg>");
  box.innerHTML = svg.join("");
}

function liveCharts() {
  const host = document.getElementById("charts");
  if (!host) return;
  const rel = host.dataset.run;
  const boxes = CHARTS.map(([key, title]) => {
    const box = document.createElement("div");
    box.className = "chartbox";
    host.appendChild(box);
    return [box, key, title];
  });
  let rows = [], since = 0, first = host.dataset.state;
  const poll = async () => {
    let data;
    try {
      const response = await fetch(runUrl(rel, "/log?since=" + since));
      if (!response.ok) return;
      data = await response.json();
    } catch (error) {
      setTimeout(poll, 2000);
      return;
    }
    rows = rows.concat(data.rows);
    since = data.next;
    boxes.forEach(([box, key, title]) => drawChart(box, key, title, rows));
    const state = document.getElementById("state");
    if (state.dataset.state !== data.state) {
      state.dataset.state = data.state;
      state.className = "state " + data.state;
      state.textContent = data.state;
    }
    if (data.state === "running") setTimeout(poll, 1000);
    else if (first === "running") location.reload(); // the evaluation and plots are on the page now
  };
  poll();
}

function preflight() {
  const box = document.getElementById("preflight");
  if (!box) return;
  box.addEventListener("toggle", async () => {
    if (!box.open || box.dataset.loaded) return;
    box.dataset.loaded = "1";
    const response = await fetch(box.dataset.src);
    box.querySelector("pre").textContent = await response.text();
  });
}

// --- chat ----------------------------------------------------------------------------------------

async function streamReply(rel, system, messages, out) {
  const response = await fetch(runUrl(rel, "").replace("/api/run/", "/api/chat/"), {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Ftkit-Token": token() },
    body: JSON.stringify({ model: system, messages: messages, stream: true, max_tokens: 128, temperature: 0 }),
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({ error: response.statusText }));
    throw new Error(body.error || response.statusText);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", text = "", usage = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).replace(/^data: /, "");
      buffer = buffer.slice(cut + 2);
      if (line === "[DONE]") continue;
      const event = JSON.parse(line);
      if (event.error) throw new Error(event.error.message);
      if (event.usage) usage = event.usage;
      const piece = event.choices && event.choices[0] && event.choices[0].delta.content;
      if (piece) {
        text += piece;
        out.textContent = text;
      }
    }
  }
  return { text, usage };
}

function chat() {
  const host = document.getElementById("chat");
  if (!host) return;
  const rel = host.dataset.run;
  const threads = Array.from(host.querySelectorAll(".thread"));
  const history = new Map(threads.map((t) => [t.dataset.system, []]));
  const status = document.getElementById("chat-status");
  const add = (thread, role, text) => {
    const turn = document.createElement("div");
    turn.className = "turn " + role;
    turn.textContent = text;
    thread.appendChild(turn);
    return turn;
  };
  document.getElementById("reset").addEventListener("click", () => {
    threads.forEach((t) => { t.innerHTML = ""; history.set(t.dataset.system, []); });
  });
  document.getElementById("say").addEventListener("submit", async (event) => {
    event.preventDefault();
    const box = document.getElementById("message");
    const message = box.value.trim();
    if (!message) return;
    box.value = "";
    for (const thread of threads) {
      const system = thread.dataset.system;
      const turns = history.get(system);
      turns.push({ role: "user", content: message });
      add(thread, "user", message);
      const out = add(thread, "assistant", "…");
      status.textContent = system + " is answering";
      try {
        const started = performance.now();
        const reply = await streamReply(rel, system, turns, out);
        turns.push({ role: "assistant", content: reply.text });
        if (!reply.text) out.textContent = "(an empty reply: the model ended its turn at once)";
        const seconds = (performance.now() - started) / 1000;
        const tokens = reply.usage ? reply.usage.completion_tokens : 0;
        const note = document.createElement("small");
        note.textContent = " " + tokens + " tokens in " + seconds.toFixed(1) + " s (" + (tokens / seconds).toFixed(1) + " tokens/s)";
        out.appendChild(note);
      } catch (error) {
        out.textContent = "error: " + error.message;
        out.className = "turn error";
      }
    }
    status.textContent = "";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("table.sortable").forEach(sortable);
  runFilter();
  liveCharts();
  preflight();
  chat();
});
