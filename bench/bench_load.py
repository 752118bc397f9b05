"""The benchmark's processes, metrics and report (bench.run runs them; docs/benchmarks.md).

- ``produce``: open loop: request ``i`` is sent at ``t0 + i / rate`` by the wall clock, never
  waiting for replies, so a slow router shows up as queueing, not as a slower generator.
- ``consume``: reads the reply topics by assigned partitions (no group) from their end;
  records when each reply arrived; counts repeats and strays.
- ``echo``: the floor: a plain aiokafka consumer group that publishes a reply of turnout's
  shape at once (acks=all, linger_ms=1, like the worker), committing after the acks.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import time
from collections import deque
from typing import Any

import msgspec
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.types import Reply, Request, Timings
from turnout.client import ensure_topics
from turnout.kafka.admin import client_kwargs as kafka_kwargs
from turnout.testing.fake import openai_response

REPLY_PREFIX = "turnout.replies."


# -- producer -----------------------------------------------------------------------------------


async def produce(a: argparse.Namespace) -> dict[str, Any]:
    n = round(a.rate * a.duration)
    clients = a.clients.split(",")
    rng = random.Random(a.seed)
    prios = [int(p) for p in a.priorities.split(",")]
    order = weighted_order(clients, a.weights, n)
    records: list[tuple[bytes, bytes]] = []
    priority: list[int] = []
    for i in range(n):  # encode everything first: the send loop only sends
        client, prio = clients[order[i]], rng.choice(prios)
        req = Request(
            id=f"{a.tag}-{i}",
            client_id=client,
            kind="chat",
            model="default",
            body={"messages": [{"role": "user", "content": f"benchmark request {i} of {a.tag}"}]},
            priority=prio,
        )
        records.append((client.encode(), req.to_wire()))
        priority.append(prio)
    producer = AIOKafkaProducer(
        bootstrap_servers=a.bootstrap, **kafka_kwargs(), acks="all", linger_ms=1,
    )
    await producer.start()
    sent_at = [0.0] * n
    futures = []
    try:
        t0 = time.time() + 0.05
        i = 0
        while i < n:
            due = min(n, int((time.time() - t0) * a.rate) + 1)
            while i < due:
                key, value = records[i]
                futures.append(await producer.send(a.topic, value, key=key))
                sent_at[i] = time.time()
                i += 1
            wait = t0 + i / a.rate - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        results = await asyncio.gather(*futures, return_exceptions=True)
        acked = time.time()
    finally:
        await producer.stop()
    errors = sum(isinstance(r, BaseException) for r in results)
    return {"t0": t0, "rate": a.rate, "n": n, "sent_at": sent_at, "priority": priority,
            "send_errors": errors, "all_acked_at": acked, "clients": clients, "client": order}


def weighted_order(clients: list[str], weights: str | None, n: int) -> list[int]:
    """Which client sends each of ``n`` requests: round robin, or smooth weighted round robin.

    >>> weighted_order(["a", "b"], None, 4)
    [0, 1, 0, 1]
    >>> weighted_order(["a", "b", "c"], "3,1,1", 5)
    [0, 1, 0, 2, 0]
    """
    if not weights:
        return [i % len(clients) for i in range(n)]
    w = [float(x) for x in weights.split(",")]
    if len(w) != len(clients):
        raise SystemExit(f"--weights has {len(w)} values for {len(clients)} clients")
    current, total, out = [0.0] * len(w), sum(w), []
    for _ in range(n):
        current = [c + x for c, x in zip(current, w, strict=True)]
        best = max(range(len(w)), key=lambda k: current[k])
        current[best] -= total
        out.append(best)
    return out


# -- reply consumer -----------------------------------------------------------------------------


class _ReplyLite(msgspec.Struct):
    id: str
    status: str
    timings: Timings | None = None


_reply_lite = msgspec.json.Decoder(_ReplyLite)


async def consume(a: argparse.Namespace) -> dict[str, Any]:
    topics = a.topics.split(",")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=a.bootstrap, **kafka_kwargs(), enable_auto_commit=False,
                                fetch_max_wait_ms=100, max_partition_fetch_bytes=4 << 20)
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    prefix = a.tag + "-"
    received: dict[int, list[Any]] = {}
    repeats: list[int] = []
    strays = 0
    try:
        counts = await ensure_topics(a.bootstrap, topics, 2)  # they exist: this reads counts
        tps = [TopicPartition(t, p) for t in topics for p in range(counts[t])]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve positions now, before the producer sends anything
            await consumer.position(tp)
        print("ready", flush=True)
        deadline = time.time() + a.max_s
        complete_at: float | None = None
        while not stop.is_set() and time.time() < deadline:
            if complete_at is not None and time.time() > complete_at + a.linger_s:
                break
            batches = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for recs in batches.values():
                for rec in recs:
                    r = _reply_lite.decode(rec.value)
                    if not r.id.startswith(prefix):
                        strays += 1
                        continue
                    seq = int(r.id[len(prefix):])
                    if seq in received:
                        repeats.append(seq)
                        continue
                    t = r.timings
                    received[seq] = [now, r.status == "ok", t.backend_ms if t else 0.0,
                                     t.queue_ms if t else 0.0, t.total_ms if t else 0.0]
            if complete_at is None and len(received) >= a.n:
                complete_at = time.time()
    finally:
        await consumer.stop()
    return {"received": received, "repeats": repeats, "strays": strays}


# -- the floor: a plain aiokafka echo -----------------------------------------------------------


async def echo(a: argparse.Namespace) -> None:
    consumer = AIOKafkaConsumer(
        a.topic, bootstrap_servers=a.bootstrap, **kafka_kwargs(), group_id=a.group,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    producer = AIOKafkaProducer(
        bootstrap_servers=a.bootstrap, **kafka_kwargs(), acks="all", linger_ms=1,
    )
    await producer.start()
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pending: deque[tuple[dict[TopicPartition, int], list[asyncio.Future[Any]]]] = deque()
    commit: dict[TopicPartition, int] = {}
    last_commit = time.monotonic()
    print("ready", flush=True)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=50)
            offsets, futures = {}, []
            for tp, recs in batches.items():
                for rec in recs:
                    req = Request.from_wire(rec.value)
                    now = time.time() * 1000
                    waited = now - rec.timestamp
                    reply = Reply(
                        id=req.id, status="ok", client_id=req.client_id,
                        body=openai_response("chat", "echo", req.body, created=int(now / 1000)),
                        backend="echo", route="default", policy="round_robin",
                        reason="turn 0 of 1 with capacity", attempts=1,
                        timings=Timings(queue_ms=waited, backend_ms=0.0, total_ms=waited),
                    )
                    futures.append(await producer.send(
                        req.reply_to or REPLY_PREFIX + req.client_id, reply.to_wire(),
                        key=req.id.encode(), headers=[("turnout-request-id", req.id.encode())]))
                    offsets[tp] = rec.offset + 1
            if futures:
                pending.append((offsets, futures))
            while pending and all(f.done() for f in pending[0][1]):
                commit.update(pending.popleft()[0])
            if commit and time.monotonic() - last_commit > 0.5:
                await consumer.commit(commit)
                commit, last_commit = {}, time.monotonic()
    finally:
        await consumer.stop()
        await producer.stop()


# -- metrics ------------------------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    s = sorted(values)

    def rank(q: float) -> float:  # nearest rank
        return round(s[min(len(s) - 1, max(0, int(q * len(s) + 0.999999) - 1))], 1)

    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": round(s[-1], 1)}


def summarize(prod: dict[str, Any], cons: dict[str, Any], *, duration: float,
              latency_s: float = 0.0, warm_s: float = 1.0) -> dict[str, Any]:
    """One step's metrics; times in ms. ``latency_s`` is the backend's own latency."""
    t0, rate, n = prod["t0"], prod["rate"], prod["n"]
    received = {int(k): v for k, v in cons["received"].items()}
    e2e, router, by_prio = [], [], {}
    for seq, (recv, _ok, backend_ms, _q, _t) in received.items():
        ms = (recv - (t0 + seq / rate)) * 1000
        e2e.append(ms)
        router.append(ms - backend_ms)
        by_prio.setdefault(prod["priority"][seq], []).append(ms)
    lo, hi = t0 + warm_s + latency_s, t0 + duration + latency_s
    in_window = sum(1 for v in received.values() if lo <= v[0] < hi)
    events = sorted([(t, 1) for t in prod["sent_at"]] + [(v[0], -1) for v in received.values()])
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    lag = [(t - (t0 + i / rate)) * 1000 for i, t in enumerate(prod["sent_at"])]
    by_client: dict[str, list[float]] = {}
    if "client" in prod:
        names = prod["clients"]
        for seq, (recv, ok, *_rest) in received.items():
            if ok:
                by_client.setdefault(names[prod["client"][seq]], []).append(
                    (recv - (t0 + seq / rate)) * 1000)
    return {
        "by_client": {c: {"n": len(v), **percentiles(v)} for c, v in sorted(by_client.items())},
        "offered_rps": rate,
        "sent": n,
        "replies": len(received),
        "lost": n - len(received),
        "duplicates": len(cons["repeats"]),
        "errors": sum(1 for v in received.values() if not v[1]),
        "send_errors": prod["send_errors"],
        "strays": cons["strays"],
        "throughput_rps": round(in_window / (hi - lo), 1),
        "e2e_ms": percentiles(e2e),
        "router_ms": percentiles(router),
        "peak_in_flight": peak,
        "generator_lag_ms": percentiles(lag),
        "by_priority": {str(p): {"n": len(v), **percentiles(v)}
                        for p, v in sorted(by_prio.items())},
    }


def verdict(m: dict[str, Any]) -> list[str]:
    """Why a step is not sustainable: p99 > 1 s, any loss, or < 95% of the offered rate."""
    return [why for why, bad in (
        ("p99 > 1 s", (m["e2e_ms"]["p99"] or 1e9) > 1000), ("lost", m["lost"] > 0),
        ("replies < 95% of offered", m["throughput_rps"] < 0.95 * m["offered_rps"])) if bad]


# -- entry points (python -m bench.run load-produce | load-consume | echo) ------------------


def main(command: str, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"bench.run {command}")
    for flag, kind in (("bootstrap", str), ("out", str), ("topic", str), ("topics", str),
                       ("tag", str), ("rate", float), ("duration", float), ("clients", str),
                       ("priorities", str), ("seed", int), ("n", int), ("max-s", float),
                       ("linger-s", float), ("group", str), ("weights", str)):
        p.add_argument(f"--{flag}", type=kind)
    p.set_defaults(bootstrap="127.0.0.1:9092", priorities="5", seed=1, linger_s=1.0)
    a = p.parse_args(argv)
    if command == "echo":
        asyncio.run(echo(a))
        return 0
    out = asyncio.run(produce(a) if command == "load-produce" else consume(a))
    with open(a.out, "wb") as f:
        f.write(orjson.dumps(out, option=orjson.OPT_NON_STR_KEYS))
    return 0


# -- worker logs and profiles ---------------------------------------------------------------------


def scan_log(path: Any, run: str) -> dict[str, Any]:
    """A worker's log: requests completed per step, other events, lines that are not JSON."""
    out: dict[str, Any] = {"lines": 0, "completed": {}, "not_ok": 0, "events": {}, "other": []}
    for raw in path.read_bytes().splitlines() if path.exists() else ():
        out["lines"] += 1
        try:
            rec = orjson.loads(raw)
            rec.get("event")
        except (orjson.JSONDecodeError, AttributeError):
            if len(out["other"]) < 20 and raw.strip():
                out["other"].append(raw.decode("utf-8", "replace")[:300])
            continue
        if rec.get("event") == "request_completed":
            step = str(rec.get("request_id")).rsplit("-", 1)[0].removeprefix(run + ".")
            out["completed"][step] = out["completed"].get(step, 0) + 1
            out["not_ok"] += rec.get("status") != "ok"
        else:
            key = f"{rec.get('level')}:{rec.get('event')}"
            out["events"][key] = out["events"].get(key, 0) + 1
    return out


def top_functions(collapsed: str, n: int = 10) -> dict[str, Any]:
    """The top ``n`` functions by own and by total samples in py-spy's raw (collapsed) output."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            samples += int(count)
            frames = [_frame(f) for f in stack.split(";")]
            own[frames[-1]] = own.get(frames[-1], 0) + int(count)
            for f in set(frames) - {f for f in frames if f.endswith(_PLUMBING)}:
                total[f] = total.get(f, 0) + int(count)

    def top(d: dict[str, int]) -> list[list[Any]]:
        ranked = sorted(d.items(), key=lambda x: -x[1])[:n]
        return [[f, round(100 * c / max(samples, 1), 1)] for f, c in ranked]

    return {"samples": samples, "self": top(own), "total": top(total)}


_PLUMBING = ("(asyncio/events.py)", "(asyncio/base_events.py)", "(<frozen runpy>)",
             "(turnout/cli.py)", "(mode/worker.py)", "(mode/services.py)")


def _frame(f: str) -> str:
    """``f (aiokafka/producer/sender.py:12)`` -> ``f (producer/sender.py)``"""
    name, _, where = f.partition(" (")
    return f"{name} ({'/'.join(where.rsplit(':', 1)[0].split('/')[-2:])})" if where else f


# -- the HTTP path (gateway scenario) -------------------------------------------------------------

HSTART, HEND = "<!-- bench:http:start -->", "<!-- bench:http:end -->"


def http_tables(res: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    g = res["scenarios"].get("gateway")
    if not g:
        return []
    targets, lite = g["targets"], g["targets"].get("litellm", {})
    lite_p50 = (lite.get("fixed") or {}).get("added_ms", {}).get("p50")
    fixed, ramp = [], []
    for name, t in targets.items():
        if "not_measured" in t:
            fixed.append([t["label"], t["not_measured"], *["-"] * 14])
            ramp.append([t["label"], "-", t["not_measured"], "-", "-", "-"])
            continue
        m, own = t["fixed"], t["processes"]
        c, add = m["cores"], m["added_ms"]
        cpu = sum(v for k, v in m["cpu_ms_per_ok"].items() if k in own or (not own and k == "mock"))
        fixed.append([t["label"], m["throughput_rps"], *(m["e2e_ms"][q] for q in QS),
                      f"{add['p50']} / {add['p99']}",
                      _x(add["p50"], lite_p50) if name == "turnout" else "-",
                      m["reported_backend_ms"]["p50"] or "-",
                      "+".join(str(c.get(k)) for k in own) or "-", c.get("mock"), c.get("broker"),
                      c.get("loadgen"), c.get("other"), round(cpu, 2),
                      f"{m['errors']}/{m['lost']}"])
        steps = [m, *t["steps"]]
        ramp.append([t["label"], t["max_sustainable_rps"], t["limited_by"],
                     max(s["throughput_rps"] for s in steps), "; ".join(
                         f"{s['offered_rps']:g}: {s['throughput_rps']}, {s['e2e_ms']['p50']}/"
                         f"{s['e2e_ms']['p99']}" for s in steps),
                     max(s["generator_lag_ms"]["p99"] or 0 for s in steps)])
    rate = g["rate"]
    out = [(f"HTTP path at {rate:g} req/s, instant mock backend: latency and what each target adds "
            "over the direct call (measured in the same run)",
            ["target", "ok replies/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
             "added p50 / p99 ms", "added p50 / LiteLLM's", "backend p50 ms (target's own)",
             "cores: target", "mock", "broker", "load gen", "other", "CPU ms/reply (target)",
             "errors / no answer"], fixed),
           ("HTTP path: saturation (ramp; a step fails at p99 > 1 s, any error or missing "
            "answer, or < 95% of the offered rate answered ok)",
            ["target", "max sustainable/s", "stopped by", "peak ok replies/s",
             "steps (offered/s: ok/s, p50/p99 ms)", "generator lag p99 ms"], ramp),
           ("Issue 6 targets on the HTTP path: turnout (gateway + 1 worker) vs LiteLLM (1 worker)",
            ["target", "turnout", "LiteLLM", "turnout / LiteLLM", "met"],
            [[r["target"], r["turnout"], r["litellm"], r["ratio"],
              {True: "yes", False: "**no**", None: "-"}[r["met"]]] for r in g["summary"]])]
    logs = [[k, g["peak_rss_mb"].get(k), sum(log["completed"].values()), log["not_ok"],
             ", ".join(f"{e} x{v}" for e, v in sorted(log["events"].items())), len(log["other"])]
            for k, log in (("worker0", g["worker_log"][0]), ("gateway", g["gateway_log"]))]
    out.append(("HTTP path: turnout's processes, memory and logs", [
        "process", "peak RSS MB (VmHWM)", "requests logged", "not ok", "other log events",
        "non-JSON lines"], logs))
    return out


QS = ("p50", "p90", "p99", "max")


def http_header(res: dict[str, Any]) -> list[str]:
    g = res["scenarios"]["gateway"]
    lite = g["litellm"]
    env = ", ".join(f"`{k}={v}`" for k, v in lite.get("env", {}).items())
    how = (f"`{lite['command']}` from its own virtualenv (`{lite['venv']}`), {env}; config "
           "below" if "command" in lite else "**not measured**: "
           + str(g["targets"].get("litellm", {}).get("not_measured")))
    return [f"- LiteLLM {lite['version']} (`litellm[proxy]` from PyPI): {how}",
            f"- the mock backend served {g['mock_stats'].get('requests')} requests, at most "
            f"{g['mock_stats'].get('max_in_flight')} at once; RSS MB: "
            + ", ".join(f"{k} {v}" for k, v in g["peak_rss_mb"].items()),
            "- the issue's LiteLLM figures for this machine class: saturates around 100 req/s, "
            "about 11 ms added at 50 req/s"]


def plot_http(res: dict[str, Any], path: Any) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    targets = res["scenarios"]["gateway"]["targets"]
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(11, 4.5))
    rates: set[float] = set()
    colors = {"direct": "tab:gray", "litellm": "tab:orange", "turnout": "tab:blue"}
    for name, t in targets.items():
        if "not_measured" in t:
            continue
        color = colors.get(name, "tab:green")
        steps = sorted((s for s in [t["fixed"], *t["steps"]] if s["e2e_ms"]["p50"] is not None),
                       key=lambda s: s["offered_rps"])
        x = [s["offered_rps"] for s in steps]
        rates.update(x)
        for q, style in (("p50", "-o"), ("p99", "--s")):
            lat.plot(x, [s["e2e_ms"][q] for s in steps], style, color=color,
                     label=f"{t['label']} {q}")
        thr.plot(x, [s["throughput_rps"] for s in steps], "-o", color=color, label=t["label"])
    thr.plot(sorted(rates), sorted(rates), ":", color="black", label="offered")
    lat.set(xscale="log", yscale="log", xlabel="offered rate (requests/s)",
            ylabel="latency from scheduled send (ms)", title="HTTP path, instant backend")
    thr.set(xscale="log", yscale="log", xlabel="offered rate (requests/s)",
            ylabel="ok replies/s (steady window)", title=f"run {res['run']}")
    thr.set_yticks(sorted(rates), [f"{x:g}" for x in sorted(rates)])
    thr.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for ax in (lat, thr):
        ax.set_xticks(sorted(rates), [f"{x:g}" for x in sorted(rates)])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- report: stdout tables, docs/bench-results.json, docs/benchmarks.md, a plot -----------------

START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"
PSTART, PEND = "<!-- bench:profile:start -->", "<!-- bench:profile:end -->"
FSTART, FEND = "<!-- bench:fairness:start -->", "<!-- bench:fairness:end -->"


def _x(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def tables(res: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    sc, out = res["scenarios"], []
    floor = {m["tag"]: m for m in sc.get("floor", {}).get("steps", [])}
    for name in ("instant", "two-workers"):
        for m in sc.get(name, {}).get("search", {}).get("floor", {}).get("steps", []):
            floor[m["tag"]] = m
    rows, prev = [], None
    for name in ("instant", "two-workers"):
        for m in [*sc.get(name, {}).get("steps", []), sc.get(name, {}).get("priorities")]:
            if m and m.get("floor_tag") in floor:
                f = floor[m["floor_tag"]]
                rows += [_row("floor", f, None)] * (f is not prev) + [_row(
                    f"turnout ({m['label']})", m, f)]
                prev = f
    out += [("Instant backend: turnout vs the Kafka floor, each pair measured back to back", [
        "offered/s", "system", "replies/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "p50 / floor",
        "p99 / floor", "router-added p50 / p99 ms", "peak in flight", "cores: worker(s)/echo",
        "mock", "broker", "load gen", "other", "CPU ms/reply", "lost/dup/err"], rows)] * bool(rows)
    search = sc.get("instant", {}).get("search")
    if search:
        out.append(("Max sustainable rate (ramp; a step fails at p99 > 1 s, any loss, or < 95% "
                    "of the offered rate)", ["system", "max sustainable/s", "stopped by",
                    "steps (offered/s: replies/s, p99 ms)", "generator lag p99 ms"],
                    [["turnout (1 worker)" if k == "instant" else k, v["max_sustainable_rps"],
                      v["limited_by"], "; ".join(
                        f"{m['offered_rps']:.0f}: {m['throughput_rps']}, {m['e2e_ms']['p99']}"
                        for m in v["steps"]), v["generator_lag_p99_ms"]]
                     for k, v in search.items()]))
    if sc.get("slow", {}).get("steps"):
        w = sc["slow"]
        m = w["steps"][0]
        out.append((f"Slow backend ({w['latency_s']:g} s per call): throughput vs Little's law", [
            "offered/s", "in flight needed", "peak in flight (sent - answered)",
            "peak backend calls at once (mock)", "replies/s", "Little bound/s",
            "replies / bound", "p50 ms", "p99 ms", "router-added p50 / p99 ms",
            "worker peak RSS MB", "worker cores", "lost/dup/err"],
            [[m["offered_rps"], w["target_in_flight"], m["peak_in_flight"],
              w.get("mock_stats", {}).get("max_in_flight"), m["throughput_rps"],
              w["littles_bound_rps"], _x(m["throughput_rps"], w["littles_bound_rps"]),
              m["e2e_ms"]["p50"], m["e2e_ms"]["p99"], _rt(m), w["peak_rss_mb"]["worker0"],
              m["cores"].get("worker0"), _lde(m)]]))
    pr = sc.get("instant", {}).get("priorities")
    if pr:
        out.append((f"Priorities 0, 5, 9 mixed at {pr['offered_rps']:.0f}/s: latency by priority",
                    ["priority", "requests", "p50 ms", "p90 ms", "p99 ms", "max ms"],
                    [[p, v["n"], v["p50"], v["p90"], v["p99"], v["max"]]
                     for p, v in pr["by_priority"].items()]))
    out += fairness_tables(sc.get("fairness"))
    rows = []
    for name in ("instant", "two-workers", "slow"):
        for i, log in enumerate(sc.get(name, {}).get("worker_log", [])):
            rows.append([name, i, sc[name]["peak_rss_mb"].get(f"worker{i}"),
                         sum(log["completed"].values()), log["not_ok"],
                         ", ".join(f"{k} x{v}" for k, v in sorted(log["events"].items())),
                         len(log["other"]), sc[name]["dead_letters"]])
    out += [("Workers: memory and logs", ["scenario", "worker", "peak RSS MB (VmHWM)",
             "requests logged", "not ok", "other log events", "non-JSON lines",
             "dead letters"], rows)] * bool(rows)
    return out


# -- like for like: the headline (issue 19) and the cost of replication (issue 15) --------------

LSTART, LEND = "<!-- bench:headline:start -->", "<!-- bench:headline:end -->"
RSTART, REND = "<!-- bench:replication:start -->", "<!-- bench:replication:end -->"
# Each system's own processes. The mock backend is the work being routed, not the router: the
# floor has none, so it is left out on both sides of the Kafka path and of the HTTP path.
KAFKA_PROCS = {"floor": ("echo", "broker"), "turnout": ("worker0", "broker")}
HTTP_PROCS = {"turnout": ("gateway", "worker0", "broker"), "litellm": ("litellm",)}
PROC_NAMES = {"echo": "aiokafka echo", "broker": "Kafka broker", "worker0": "worker",
              "gateway": "gateway", "litellm": "LiteLLM proxy (1 worker)"}


def _own(values: dict[str, float], procs: tuple[str, ...]) -> float | None:
    got = [values[k] for k in procs if k in values]
    return round(sum(got), 3) if got else None


def _r(a: float | None, b: float | None) -> float | None:
    """``a / b`` to three significant figures (a tiny ratio stays readable, not 0)."""
    return float(f"{a / b:.3g}") if a is not None and b else None


def _peak(steps: list[dict[str, Any]]) -> float | None:
    return max((m["throughput_rps"] for m in steps if m), default=None)


def _at_max(steps: list[dict[str, Any]], rate: float | None) -> dict[str, Any] | None:
    return next((m for m in steps if m and m["offered_rps"] == rate and not m.get("failed")),
                None)


def kafka_systems(sc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Kafka path's figures per system (floor, turnout): all from this run's steps."""
    inst, search = sc.get("instant", {}), sc.get("instant", {}).get("search")
    if not inst.get("steps") or not search or "floor" not in sc:
        return {}
    floor_steps = {m["tag"]: m for m in sc["floor"]["steps"]}
    top = inst["steps"][-1]
    pair = {"floor": floor_steps.get(top.get("floor_tag")), "turnout": top}
    ramp = {"floor": search["floor"], "turnout": search["instant"]}
    fixed = {"floor": [floor_steps[m["floor_tag"]] for m in inst["steps"]
                       if m.get("floor_tag") in floor_steps], "turnout": inst["steps"]}
    return {k: _figures(pair[k], ramp[k], fixed[k], KAFKA_PROCS[k], "cpu_ms_per_reply")
            for k in ("floor", "turnout") if pair[k]}


def http_systems(sc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The HTTP path's figures per system (LiteLLM, turnout), from this run's steps."""
    targets = sc.get("gateway", {}).get("targets", {})
    out = {}
    for k in ("litellm", "turnout"):
        t = targets.get(k)
        if t and "fixed" in t and "from_run" not in sc.get("gateway", {}):
            out[k] = _figures(t["fixed"], t, [t["fixed"]], HTTP_PROCS[k], "cpu_ms_per_ok")
    return out


def _figures(at_rate: dict[str, Any], ramp: dict[str, Any], fixed: list[dict[str, Any]],
             procs: tuple[str, ...], cpu_key: str) -> dict[str, Any]:
    steps = [*fixed, *ramp["steps"]]
    best = ramp["max_sustainable_rps"]
    at_max = _at_max(steps, best)
    return {
        "processes": [PROC_NAMES.get(p, p) for p in procs],
        "max_sustainable_rps": best, "limited_by": ramp["limited_by"],
        "peak_rps": _peak(steps), "rate": at_rate["offered_rps"],
        "p50_ms": at_rate["e2e_ms"]["p50"], "p99_ms": at_rate["e2e_ms"]["p99"],
        "cores": _own(at_rate["cores"], procs), "cpu_ms": _own(at_rate[cpu_key], procs),
        "cores_at_max": _own(at_max["cores"], procs) if at_max else None,
        "cpu_ms_at_max": _own(at_max[cpu_key], procs) if at_max else None,
        "lost": sum(m.get("lost", 0) for m in steps if not m.get("failed")),
    }


def headline(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Like for like, every figure from this run: the Kafka path against the floor, the HTTP
    path against LiteLLM, each with its processes, cores and CPU per reply, and the ratios."""
    sc, out = res["scenarios"], []
    for path, systems, (a, b) in (("Kafka path", kafka_systems(sc), ("turnout", "floor")),
                                  ("HTTP path", http_systems(sc), ("turnout", "litellm"))):
        if a in systems and b in systems:
            x, y = systems[a], systems[b]
            out.append({"path": path, "systems": {b: y, a: x}, "ratio": {
                k: _r(x[k], y[k]) for k in ("max_sustainable_rps", "peak_rps", "p50_ms",
                                            "p99_ms", "cpu_ms", "cpu_ms_at_max")}})
    return out


SYSTEM_LABELS = {"floor": "floor (aiokafka consume → produce)", "turnout": "turnout",
                 "litellm": "LiteLLM proxy"}


def headline_tables(res: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    rows = []
    for h in headline(res):
        names = list(h["systems"])
        for name, f in h["systems"].items():
            rows.append([h["path"], SYSTEM_LABELS[name], " + ".join(f["processes"]),
                         f["max_sustainable_rps"], f["peak_rps"],
                         f"{f['p50_ms']} / {f['p99_ms']} at {f['rate']:g}/s", f["cores"],
                         f["cpu_ms"], f["cores_at_max"], f["cpu_ms_at_max"]])
        r = h["ratio"]
        rows.append([h["path"], f"**ratio {names[1]} / {names[0]}**", "",
                     _xr(r["max_sustainable_rps"]), _xr(r["peak_rps"]),
                     f"{_xr(r['p50_ms'])} / {_xr(r['p99_ms'])}", "", _xr(r["cpu_ms"]), "",
                     _xr(r["cpu_ms_at_max"])])
    if not rows:
        return []
    return [(f"Like for like (run {res['run']}: every figure and ratio from this one run)",
             ["path", "system", "its processes", "max sustainable req/s", "peak replies/s",
              "p50 / p99 ms", "cores used", "CPU ms/reply", "cores at its max",
              "CPU ms/reply at its max"], rows)]


def _xr(v: float | None) -> str:
    return f"{v:g}x" if v is not None else "-"


def replication_rows(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """Per cluster and system: sustained rate, p50/p99 at the fixed rate, CPU per reply."""
    out = []
    for label, c in rep.get("clusters", {}).items():
        for name in ("floor", "turnout"):
            s = c.get(name)
            if not s:
                continue
            ramp = s.get("search") or {"steps": [], "max_sustainable_rps": None,
                                       "limited_by": "no ramp (--no-search)"}
            f = _figures(s["fixed"], ramp, [s["fixed"]], KAFKA_PROCS[name], "cpu_ms_per_reply")
            router = _own(s["fixed"]["cpu_ms_per_reply"], KAFKA_PROCS[name][:1])
            brokers = s["fixed"]["cpu_ms_per_reply"].get("broker")
            out.append({"cluster": label, "system": name, **f, "router_cpu_ms": router,
                        "broker_cpu_ms": brokers, "brokers": len(c.get("brokers", [])),
                        "topics": c.get("topics", {})})
    return out


def replication_tables(res: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    rep = res["scenarios"].get("replication")
    if not rep:
        return []
    rows, by = [], {}
    for r in replication_rows(rep):
        by[(r["cluster"], r["system"])] = r
        rf = {v.get("replication_factor") for k, v in r["topics"].items() if k != "brokers"}
        isr = {v.get("min.insync.replicas") for k, v in r["topics"].items() if k != "brokers"}
        rows.append([r["cluster"], SYSTEM_LABELS[r["system"]],
                     f"{'/'.join(map(str, sorted(rf)))} / {'/'.join(map(str, sorted(isr)))}",
                     r["max_sustainable_rps"], r["limited_by"],
                     f"{r['p50_ms']} / {r['p99_ms']}", r["router_cpu_ms"], r["broker_cpu_ms"],
                     r["cpu_ms"], r["lost"]])
    ratio = []
    for name in ("floor", "turnout"):
        one, three = by.get(("1 node", name)), by.get(("3 nodes", name))
        if one and three:
            ratio.append([SYSTEM_LABELS[name], _xr(_r(three["max_sustainable_rps"],
                                                     one["max_sustainable_rps"])),
                          f"{_xr(_r(three['p50_ms'], one['p50_ms']))} / "
                          f"{_xr(_r(three['p99_ms'], one['p99_ms']))}",
                          _xr(_r(three["cpu_ms"], one["cpu_ms"]))])
    rate = rep.get("rate", 0)
    return [(f"One node vs three (run {res['run']}): turnout (1 worker) and the floor, same run",
             ["cluster", "system", "topics RF / min ISR", "max sustainable req/s", "stopped by",
              f"p50 / p99 ms at {rate:g}/s", "router CPU ms/reply", "broker(s) CPU ms/reply",
              "total CPU ms/reply", "lost"], rows),
            ("Three nodes / one node", ["system", "max sustainable", "p50 / p99",
                                        "CPU ms/reply (router + brokers)"], ratio)]


def fairness_tables(f: dict[str, Any] | None) -> list[tuple[str, list[str], list[list[Any]]]]:
    """The quiet clients' latency without and with one client far over its limit."""
    if not f or not f.get("steps"):
        return []
    base, noisy = f["steps"]
    groups = {"quiet clients": [c for c in f["clients"] if c != f["noisy"]],
              "quiet, on the noisy client's partition": f["sharing"]}
    rows = []
    for label, names in groups.items():
        p99 = [pooled_p99(m, names) for m in (base, noisy)]
        rows.append([label, len(names), p99[0], p99[1], _x(p99[1], p99[0])])
    nm = noisy["by_client"].get(f["noisy"], {})
    title = (f"Fairness: {len(f['clients'])} clients at their limit ({f['limit_rps']:g}/s each), "
             f"then one of them at {f['factor']:g} times it (run {f.get('run', '?')})")
    return [(title, ["clients", "count", "p99 ms alone", "p99 ms beside the noisy client",
                     "ratio"], [*rows, ["noisy client: ok replies", 1, "-", nm.get("n"), "-"]])]


def pooled_p99(m: dict[str, Any], names: list[str]) -> float | None:
    """The largest per-client p99 of ``names`` in step ``m`` (the worst-served quiet client)."""
    vals = [m["by_client"][c]["p99"] for c in names if c in m["by_client"]]
    return max((v for v in vals if v is not None), default=None)


def _rt(m: dict[str, Any]) -> str:
    return f"{m['router_ms']['p50']} / {m['router_ms']['p99']}"


def _lde(m: dict[str, Any]) -> str:
    return f"{m['lost']}/{m['duplicates']}/{m['errors'] + m['send_errors']}"


def _row(system: str, m: dict[str, Any], f: dict[str, Any] | None) -> list[Any]:
    e, c = m["e2e_ms"], m["cores"]
    ours = [v for k, v in c.items() if k.startswith(("worker", "echo"))]
    cpu = sum(v for k, v in m["cpu_ms_per_reply"].items() if k.startswith(("worker", "echo")))
    return [m["offered_rps"], system, m["throughput_rps"], e["p50"], e["p90"], e["p99"], e["max"],
            _x(e["p50"], f and f["e2e_ms"]["p50"]), _x(e["p99"], f and f["e2e_ms"]["p99"]),
            _rt(m), m["peak_in_flight"], "+".join(map(str, ours)), c.get("mock", "-"),
            c.get("broker"), c.get("loadgen"), c.get("other"), round(cpu, 2), _lde(m)]


def _text(title: str, head: list[str], rows: list[list[Any]]) -> str:
    cells = [head, *[[str(c) for c in r] for r in rows]]
    w = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return f"\n{title}\n" + "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r))
                                      for r in cells)


def _md(title: str, head: list[str], rows: list[list[Any]]) -> str:
    body = "\n".join("| " + " | ".join(str(c) for c in r) + " |" for r in rows)
    return f"\n### {title}\n\n| {' | '.join(head)} |\n|{'---|' * len(head)}\n{body}\n"


def plot(res: dict[str, Any], path: Any) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    inst = res["scenarios"].get("instant", {})
    search = inst.get("search", {})
    fixed = {m["tag"]: m for m in res["scenarios"]["floor"]["steps"]}
    series = {"floor (aiokafka echo)": [fixed[m["floor_tag"]] for m in inst.get("steps", [])]
              + search.get("floor", {}).get("steps", []),
              "turnout, 1 worker": inst.get("steps", []) + search.get("instant", {}).get("steps",
                                                                                         [])}
    fig, ax = plt.subplots(figsize=(8, 5))
    for (label, steps), color in zip(series.items(), ("tab:gray", "tab:blue"), strict=True):
        steps = sorted((m for m in steps if m["e2e_ms"]["p50"]), key=lambda m: m["offered_rps"])
        for q, style in (("p50", "-o"), ("p99", "--s")):
            ax.plot([m["offered_rps"] for m in steps], [m["e2e_ms"][q] for m in steps], style,
                    color=color, label=f"{label} {q}")
    ax.set(xscale="log", yscale="log", xlabel="offered rate (requests/s)",
           ylabel="end-to-end latency (ms)", title=f"Instant backend, run {res['run']}")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(res: dict[str, Any], root: Any, args: Any) -> None:
    ts, hs, ls, rs = tables(res), http_tables(res), headline_tables(res), replication_tables(res)
    print("".join(_text(*t) for t in ts + hs + rs + ls))
    res["headline"] = headline(res)
    out = root / args.json
    out.write_bytes(orjson.dumps(_merged(res, out), option=orjson.OPT_INDENT_2
                                 | orjson.OPT_NON_STR_KEYS))
    print(f"\nresults: {args.json}")
    if not args.docs:
        return
    docs, m = root / args.docs, res["machine"]
    head = [f"\n_Generated by `{args.command}` (run `{res['run']}`, {res['elapsed_s']} s, "
            f"turnout at {m['git']})._\n",
            f"- machine: {m['nproc']} cores ({m['cpu']}), {m['mem_mb']} MB RAM, Linux "
            f"{m['kernel']}; the broker, worker(s), mock backend and load generator all share "
            "these cores",
            f"- Python {m['python']}, aiokafka {m['aiokafka']}, faust-streaming "
            f"{m['faust-streaming']}; {m['broker']}", *other_load(res)]
    text = docs.read_text() if docs.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if "floor" in res["scenarios"]:  # the Kafka path was measured: its section is this run's
        png = docs.parent / "bench-latency.png"
        text = _splice(text, START, END, "\n".join([
            START, *head, "- LiteLLM baseline: on the HTTP path (the `gateway` scenario below)",
            *(_md(*t) for t in ts),
            f"\n![latency vs offered rate]({png.name})\n" if plot(res, png) else
            "\n(no plot: matplotlib is not installed in .venv; `pip install matplotlib` for one)\n",
            END]))
    if hs:
        png, lite = docs.parent / "bench-http.png", res["scenarios"]["gateway"]["litellm"]
        text = _splice(text, HSTART, HEND, "\n".join([
            HSTART, "\n#### HTTP path: the `gateway` scenario", *head, *http_header(res),
            *(_md(*t) for t in hs),
            f"\nLiteLLM's config (`litellm.yaml`):\n\n```yaml\n{lite['config']}```\n"
            if "config" in lite else "",
            f"\n![HTTP path: latency and throughput vs offered rate]({png.name})\n"
            if plot_http(res, png) else "\n(no plot: matplotlib is not installed in .venv)\n",
            HEND]), after=END)
    if ls:
        text = _splice(text, LSTART, LEND, "\n".join([
            LSTART, *head, f"- results: `{args.json}`", *(_md(*t) for t in ls), LEND]),
            after="## Results")
    if rs:
        text = _splice(text, RSTART, REND, "\n".join([
            RSTART, *head, f"- results: `{args.json}`", *replication_head(res),
            *(_md(*t) for t in rs), REND]))
    fair = fairness_tables(res["scenarios"].get("fairness"))
    if fair:
        text = _splice(text, FSTART, FEND, "\n".join([FSTART, *head, *(_md(*t) for t in fair),
                                                       FEND]))
    prof = res["scenarios"].get("instant", {}).get("profile", {}).get("extra")
    if prof and "self" in prof:
        rows = [[i + 1, f"`{a[0]}`", a[1], f"`{b[0]}`", b[1]]
                for i, (a, b) in enumerate(zip(prof["self"], prof["total"], strict=False))]
        title = (f"Worker profile at {max(args.rates):.0f} req/s ({prof['samples']} py-spy "
                 f"samples, run {res['run']})")
        table = _md(title, ["#", "own time", "% samples", "with callees", "% samples"], rows)
        text = _splice(text, PSTART, PEND, f"{PSTART}\n{table}\n{PEND}")
    docs.write_text(text)
    print(f"docs: {args.docs}")


def _steps(x: Any) -> list[dict[str, Any]]:
    """Every measured step anywhere in ``x`` (a dict with ``cores`` and ``offered_rps``)."""
    if isinstance(x, dict):
        own = [x] if "cores" in x and "offered_rps" in x else []
        return own + [s for v in x.values() for s in _steps(v)]
    if isinstance(x, list):
        return [s for v in x for s in _steps(v)]
    return []


def other_load(res: dict[str, Any]) -> list[str]:
    """How much of the machine other people's work took during this run's steps."""
    other = [s["cores"]["other"] for s in _steps(res["scenarios"]) if "other" in s["cores"]]
    if not other:
        return []
    return [f"- **shared machine**: other work (not this benchmark's processes) used "
            f"{sum(other) / len(other):.2f} cores on average during the {len(other)} measured "
            f"steps (max {max(other):.2f}) of the {res['machine']['nproc']}; absolute figures "
            "reflect that, ratios from the same run less so"]


def replication_head(res: dict[str, Any]) -> list[str]:
    return [f"- {label}: {c['bootstrap']}; " + "; ".join(c["status"].splitlines()[:4])
            for label, c in res["scenarios"]["replication"]["clusters"].items()]


def _merged(res: dict[str, Any], path: Any) -> dict[str, Any]:
    """This run's results plus, from the file's earlier results, the scenarios of the path
    (Kafka or HTTP) this run did not measure, each marked ``from_run``: a gateway-only run keeps
    the Kafka results and the other way round, as the docs do."""
    try:
        old = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return res

    def kind(k: str) -> str:
        return {"gateway": "http", "replication": "replication"}.get(k, "kafka")

    measured = {kind(k) for k in res["scenarios"]}
    keep = {k: {"from_run": old.get("run"), **v} for k, v in old.get("scenarios", {}).items()
            if kind(k) not in measured}
    return {**res, "scenarios": {**keep, **res["scenarios"]}}


def _splice(text: str, start: str, end: str, section: str, after: str = "") -> str:
    """Replace the text from ``start`` to ``end``; without them, put ``section`` just after
    the ``after`` marker if there is one, else at the end."""
    if start in text and end in text:
        return text.split(start)[0] + section + text.split(end, 1)[1]
    if after and after in text:
        head, tail = text.split(after, 1)
        return f"{head}{after}\n\n{section}{tail}"
    return text.rstrip() + "\n\n" + section + "\n"
