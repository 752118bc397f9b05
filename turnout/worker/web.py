"""The worker's small web server: ``/metrics``, ``/status.json`` and a status page at ``/``.

    app = build_app(metrics, status=lambda: {"worker": {...}})
    runner = await start_web(app, "127.0.0.1", settings.web_port)
    ...
    await runner.cleanup()

``/status.json`` is ``metrics.snapshot()`` with ``status()`` merged over it (nested
objects are merged key by key, so ``status`` may add fields to a backend's entry).
The page at ``/`` is static HTML and JavaScript: it polls ``/status.json`` every
2 s and draws backends, throughput and errors over the last ten minutes, and lag.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from turnout import logs
from turnout.worker.metrics import Metrics

log = logs.get(__name__)

StatusFn = Callable[[], Mapping[str, Any]]


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``extra``; where both hold an object, merged recursively."""
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = merge(old, value)
        else:
            out[key] = value
    return out


def build_app(metrics: Metrics, status: StatusFn | None = None) -> web.Application:
    async def metrics_handler(request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def status_handler(request: web.Request) -> web.Response:
        doc = metrics.snapshot()
        if status is not None:
            try:
                doc = merge(doc, status())
            except Exception:  # the page must keep working when a status source breaks
                log.exception("status_source_failed")
                doc["status_error"] = "the worker's status source failed; see its log"
        return web.Response(
            body=orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def page_handler(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/status.json", status_handler)
    app.router.add_get("/", page_handler)
    return app


async def start_web(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` on host:port (0: any free port, see ``bound_port``); stop: ``cleanup()``."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("web_started", host=host, port=bound_port(runner))
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port a started runner listens on."""
    return int(runner.addresses[0][1])


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>turnout worker</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d2330; background: #f6f7f9; }
 h1 { font-size: 1.3em; margin: 0 0 .2em; } h2 { font-size: 1.05em; margin: 1.2em 0 .4em; }
 .muted { color: #667; } .err { color: #b3261e; }
 table { border-collapse: collapse; background: #fff; min-width: 40em; }
 th, td { padding: .35em .8em; border-bottom: 1px solid #e3e5ea; text-align: left; }
 td.n { text-align: right; font-variant-numeric: tabular-nums; }
 .state { display: inline-block; padding: .05em .6em; border-radius: 1em; color: #fff; }
 .healthy { background: #2e7d32; } .degraded { background: #ed8c00; }
 .unhealthy { background: #c62828; } .probation { background: #1565c0; }
 .unknown { background: #78808c; }
 .tiles { display: flex; gap: 1em; flex-wrap: wrap; }
 .tile { background: #fff; padding: .6em 1em; border-radius: .4em; min-width: 8em; }
 .tile b { display: block; font-size: 1.5em; }
 svg { background: #fff; border-radius: .4em; }
</style></head>
<body>
<h1>turnout worker</h1>
<div class="muted" id="meta">loading /status.json ...</div>
<div class="tiles" id="tiles"></div>
<h2>Backends</h2>
<table id="backends"><thead><tr><th>backend</th><th>state</th><th>latency (ms)</th>
<th>ok, last min</th><th>errors, last min</th><th>requests</th><th>errors</th><th>tokens</th>
<th>est. cost</th></tr></thead>
<tbody></tbody></table>
<h2>Throughput and errors, last 10 minutes <span class="muted">(per 10 s:
<span style="color:#2e7d32">ok</span>, <span style="color:#c62828">error</span>,
<span style="color:#78808c">skipped</span>)</span></h2>
<svg id="chart" width="720" height="160" role="img" aria-label="throughput"></svg>
<h2>Lag of <span id="topic"></span> <span class="muted">(records not yet committed)</span></h2>
<table id="lag"><thead><tr><th>partition</th><th>lag</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
function el(tag, attrs, text) {
  const e = attrs.svg ? document.createElementNS("http://www.w3.org/2000/svg", tag)
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (k !== "svg") e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function cell(row, text, cls) {
  const td = el("td", cls ? {class: cls} : {}, text);
  row.appendChild(td);
  return td;
}
function fmt(x) { return x === null || x === undefined ? "-" : String(x); }
function render(s) {
  document.getElementById("meta").textContent = "updated " +
    new Date(s.now_ms).toLocaleTimeString() + (s.worker ? " - " + JSON.stringify(s.worker) : "");
  document.getElementById("meta").className = s.status_error ? "err" : "muted";
  const tiles = document.getElementById("tiles"); tiles.replaceChildren();
  const t = s.totals || {};
  for (const [label, v] of [["in flight", s.in_flight], ["ok", t.ok], ["errors", t.error],
      ["skipped (done)", t.skipped], ["dead letters", t.dead_lettered],
      ["rate limited", t.rate_limited], ["lag", s.lag_total]]) {
    const d = el("div", {class: "tile"});
    d.appendChild(el("b", {}, fmt(v)));
    d.appendChild(document.createTextNode(label));
    tiles.appendChild(d);
  }
  const body = document.querySelector("#backends tbody"); body.replaceChildren();
  for (const [id, b] of Object.entries(s.backends || {})) {
    const row = el("tr", {"data-backend": id, id: "backend-" + id});
    cell(row, id);
    const state = b.state || "unknown";
    cell(row, "").appendChild(el("span", {class: "state " + state}, state));
    cell(row, fmt(b.latency_ms), "n");
    const lm = b.last_minute || {};
    cell(row, fmt(lm.ok), "n"); cell(row, fmt(lm.error), "n");
    cell(row, fmt(b.requests), "n"); cell(row, fmt(b.errors), "n");
    cell(row, fmt(b.tokens), "n"); cell(row, b.cost === undefined ? "-" : b.cost.toFixed(4), "n");
    body.appendChild(row);
  }
  drawChart(s.history || {});
  document.getElementById("topic").textContent = s.request_topic || "the request topic";
  const lag = document.querySelector("#lag tbody"); lag.replaceChildren();
  for (const [p, n] of Object.entries(s.lag || {})) {
    const row = el("tr", {}); cell(row, p); cell(row, fmt(n), "n"); lag.appendChild(row);
  }
}
function drawChart(h) {
  const svg = document.getElementById("chart"); svg.replaceChildren();
  const ok = h.ok || [], err = h.error || [], sk = h.skipped || [];
  const n = ok.length || 1, W = 720, H = 160, pad = 20;
  let max = 1;
  for (let i = 0; i < ok.length; i++) max = Math.max(max, ok[i] + err[i] + (sk[i] || 0));
  const bw = (W - 2 * pad) / n;
  for (let i = 0; i < ok.length; i++) {
    let y = H - pad;
    for (const [v, color] of [[ok[i], "#2e7d32"], [err[i], "#c62828"], [sk[i] || 0, "#78808c"]]) {
      if (!v) continue;
      const hgt = (H - 2 * pad) * v / max; y -= hgt;
      svg.appendChild(el("rect", {svg: 1, x: pad + i * bw, y: y, width: Math.max(bw - 1, 1),
                                  height: hgt, fill: color}));
    }
  }
  svg.appendChild(el("line", {svg: 1, x1: pad, y1: H - pad, x2: W - pad, y2: H - pad,
                              stroke: "#99a"}));
  svg.appendChild(el("text", {svg: 1, x: pad, y: 14, "font-size": 12, fill: "#667"},
                     "max " + max + " per " + (h.bucket_s || 10) + " s"));
}
async function poll() {
  try {
    const r = await fetch("status.json", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
  } catch (e) {
    const m = document.getElementById("meta");
    m.textContent = "cannot read /status.json: " + e;
    m.className = "err";
  }
}
poll(); setInterval(poll, 2000);
</script>
</body></html>
"""
