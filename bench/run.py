"""Benchmarks on the real broker: turnout against a plain-aiokafka floor, in the same run; on the
HTTP path (scenario ``gateway``), turnout's gateway against the mock called directly and LiteLLM's
proxy (bench.bench_http).

Every process is separate: the broker, the worker(s), the mock backend, the floor's echo and
the load generator (bench.bench_load). Topics, client ids and app ids are unique per run and
deleted at the end. Results: stdout, docs/bench-results.json, docs/benchmarks.md (``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import pathlib
import platform
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from importlib import metadata
from typing import Any

import orjson

from bench import bench_http, bench_load
from bench.bench_load import report
from turnout.client import ensure_topics
from turnout.kafka.admin import client_kwargs as kafka_kwargs

ROOT = pathlib.Path(__file__).resolve().parents[1]
PY = sys.executable
CLK = os.sysconf("SC_CLK_TCK")
SCENARIOS = ("instant", "slow", "two-workers", "priorities", "gateway", "fairness",
             "replication")
DEFAULT_SCENARIOS = SCENARIOS[:-1]  # replication needs a second, three-node cluster
# --quick: the key ratios (Kafka path vs the floor; the HTTP path vs LiteLLM when LiteLLM is
# installed) in a few minutes; any option given explicitly wins. Nothing is written to docs/.
QUICK = {"rates": [500.0], "duration": 4.0, "search_rates": [1000.0, 2000.0],
         "search_duration": 4.0, "refine": 0.25, "http_duration": 3.0, "http_direct": False,
         "http_ramp": [100.0, 400.0, 1000.0], "http_ramp_duration": 3.0, "quiet_wait_s": 1.0,
         "docs": "", "json": ""}


# -- processes and /proc ------------------------------------------------------------------------


def cpu_s(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds (None once it is gone)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK


def status_mb(pid: int, key: str = "VmHWM") -> float | None:
    with contextlib.suppress(OSError):
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


class Procs:
    """Every process the benchmark starts; all are stopped on exit, Ctrl-C or SIGTERM."""

    def __init__(self, logdir: pathlib.Path) -> None:
        self.logdir = logdir
        self.live: list[subprocess.Popen[bytes]] = []
        atexit.register(self.stop_all)  # also after an exception or sys.exit (SIGTERM)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              pipe: bool = False) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "ab")  # the child keeps it open
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})},
                                stdout=subprocess.PIPE if pipe else log,
                                stderr=log if pipe else subprocess.STDOUT)
        log.close()
        self.live.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.live:
            self.live.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.live)):
            self.stop(proc, timeout=10)


def wait_line(proc: subprocess.Popen[bytes], want: bytes, timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[3:5]} exited with {proc.returncode}")
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready and want in (line := proc.stdout.readline()):
            return line.decode()
    raise RuntimeError(f"{proc.args[3:5]} not ready in {timeout} s")


def busy_s() -> float:
    """CPU seconds the whole machine has been busy (all but idle and iowait)."""
    v = [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(v) - v[3] - v[4]) / CLK


class CpuSampler(threading.Thread):
    """Samples the CPU seconds of some processes (and of the whole machine) every 0.2 s."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.samples, self.done = pids, [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            now = {k: v for k, p in list(self.pids.items()) if (v := cpu_s(p)) is not None}
            self.samples.append((time.time(), {**now, "machine": busy_s()}))
            self.done.wait(0.2)

    def cores(self, lo: float, hi: float) -> dict[str, float]:
        """Cores used per process in [lo, hi]; ``other`` is what no process of ours used."""
        inside = [s for s in self.samples if lo <= s[0] <= hi] or self.samples[-2:]
        out: dict[str, float] = {"loadgen": 0.0}
        for k in sorted({k for _, v in inside for k in v}):
            have = [s for s in inside if k in s[1]]
            rate = (have[-1][1][k] - have[0][1][k]) / max(have[-1][0] - have[0][0], 1e-3)
            key = "loadgen" if k.startswith("load") else k
            out[key] = out.get(key, 0.0) + rate
        out["other"] = max(0.0, out["machine"] - sum(v for k, v in out.items() if k != "machine"))
        return {k: round(v, 2) for k, v in with_brokers(out).items()}


class System:
    """What is being measured: the floor's echo, or turnout's worker(s) and mock backend."""

    def __init__(self, name: str, topic: str, procs: dict[str, subprocess.Popen[bytes]],
                 url: str = "") -> None:  # url: the mock backend's
        self.name, self.topic, self.procs, self.url = name, topic, procs, url
        self.pids = {k: p.pid for k, p in procs.items()}


class HttpTarget:
    """One target of the HTTP path: its base URL, the model it expects, its processes."""

    def __init__(self, name: str, url: str, model: str, procs: dict[str, subprocess.Popen[bytes]],
                 key: str = "") -> None:
        self.name, self.url, self.model, self.procs, self.key = name, url, model, procs, key
        self.pids = {k: p.pid for k, p in procs.items()}
        self.rss: dict[str, float | None] = {}
        self.result: dict[str, Any] = {"steps": [], "max_sustainable_rps": None,
                                       "limited_by": "not reached (the ramp's top rate passed)"}

    def __repr__(self) -> str:  # never shows the key
        return f"<HttpTarget {self.name} {self.url}>"


def broker_pids(status: str) -> dict[str, int]:
    """The broker processes in ``scripts/kafka status``: ``{"broker": pid}`` for one node,
    ``{"broker1": pid, "broker2": ...}`` for a cluster ("node i: running (pid N, ...")."""
    pids = [int(x) for x in re.findall(r"\(pid (\d+)", status)]
    nodes = [int(x) for x in re.findall(r"node (\d+): running \(pid", status)]
    if len(pids) == 1 and not nodes:
        return {"broker": pids[0]}
    return {f"broker{n}": pid for n, pid in zip(nodes, pids, strict=False)}


def with_brokers(values: dict[str, float]) -> dict[str, float]:
    """``values`` plus ``broker``: the sum over a cluster's nodes (``broker1``, ``broker2``...)."""
    nodes = [v for k, v in values.items() if k.startswith("broker") and k != "broker"]
    return {**values, "broker": sum(nodes)} if nodes and "broker" not in values else values


def per_reply(a: dict[str, float], b: dict[str, float], replies: int,
              keys: list[str]) -> dict[str, float]:
    """CPU ms per reply of each process in ``keys`` between samples ``a`` and ``b``."""
    out = {k: (b[k] - a[k]) * 1000 / max(1, replies) for k in keys if k in a and k in b}
    return {k: round(v, 3) for k, v in with_brokers(out).items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until ``url`` answers 200 (RuntimeError if ``proc`` exits or time runs out)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[3:5]} exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout} s")


# -- one benchmark run ----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run = uuid.uuid4().hex[:6]
        self.dir = ROOT / "var" / "bench" / self.run
        self.dir.mkdir(parents=True)
        self.procs = Procs(self.dir)
        self.clients = [f"bench-{self.run}-c{i:02d}" for i in range(args.clients)]
        self.nice = ["nice", "-n", str(args.loadgen_nice)] if args.loadgen_nice else []
        self.reply_topics = [bench_load.REPLY_PREFIX + c for c in self.clients]
        self.dead_letters = f"bench-{self.run}.dead-letter"
        self.bootstrap = args.bootstrap  # the cluster measured now (replication: one, then another)
        self.used = {args.bootstrap}
        self.machine = machine(args.bootstrap)
        self.brokers = broker_pids(self.machine["broker"])
        self.steps = 0

    def mock(self, latency_ms: float) -> tuple[subprocess.Popen[bytes], str]:
        proc = self.procs.start(f"mock-{latency_ms:g}ms", [
            PY, "-m", "turnout.cli", "mock-backend", "--port", "0", "--latency-ms",
            str(latency_ms)], pipe=True)
        return proc, wait_line(proc, b"listening on", 30).split()[-1]

    def turnout(self, name: str, workers: int = 1, latency_ms: float = 0.0,
                mock: tuple[subprocess.Popen[bytes], str] | None = None,
                clients_yaml: str = "") -> System:
        mock, url = mock or self.mock(latency_ms)
        app_id, topic = f"bench-{self.run}-{name}", f"bench-{self.run}.requests.{name}"
        config = self.dir / f"{name}.yaml"
        config.write_text(f"backends:\n  - {{id: mock-openai, protocol: openai, base_url: '{url}'"
                          ", models: [echo], max_concurrency: 4096}\nroutes:\n  default:\n    "
                          "targets: [{backend: mock-openai, model: echo}]\n"
                          "default_route: default\n" + clients_yaml)
        env = {"KAFKA_BOOTSTRAP": self.bootstrap, "TURNOUT_CONFIG": str(config),
               "TURNOUT_APP_ID": app_id, "TURNOUT_REQUEST_TOPIC": topic,
               "TURNOUT_REQUEST_PARTITIONS": str(self.args.partitions),
               "TURNOUT_DEAD_LETTER_TOPIC": self.dead_letters, "TURNOUT_LOG_FORMAT": "json"}
        procs = {"mock": mock}
        for i in range(workers):
            env["TURNOUT_DATA_DIR"] = str(self.dir / f"data-{name}-{i}")
            procs[f"worker{i}"] = self.procs.start(f"{name}-worker{i}",
                                                   [PY, "-m", "turnout.cli", "worker"], env)
        return System(name, topic, procs, url)

    def floor(self, name: str = "floor") -> System:
        topic = f"bench-{self.run}.requests.{name}"
        asyncio.run(ensure_topics(self.bootstrap, [topic], self.args.partitions))
        echo = self.procs.start(f"{name}-echo", [
            PY, "-m", "bench.run", "echo", "--bootstrap", self.bootstrap,
            "--topic", topic, "--group", f"bench-{self.run}-{name}"], pipe=True)
        wait_line(echo, b"ready", 30)
        return System(name, topic, {"echo": echo})

    def finish(self, system: System, out: dict[str, Any]) -> dict[str, Any]:
        """Stop ``system``; add its peak RSS, its workers' logs and the dead-letter count."""
        out["peak_rss_mb"] = {k: status_mb(pid) for k, pid in system.pids.items()}
        if system.url:  # the backend calls it served, and the most it had in flight at once
            with urllib.request.urlopen(system.url + "/stats", timeout=5) as r:
                out["mock_stats"] = orjson.loads(r.read())
        for proc in sorted(system.procs.values(), key=lambda p: p.pid == system.pids.get("mock")):
            self.procs.stop(proc)  # workers first, the mock backend last
        out["worker_log"] = [bench_load.scan_log(self.dir / f"{system.name}-{k}.log", self.run)
                             for k in system.pids if k.startswith("worker")]
        out["dead_letters"] = asyncio.run(count_records(self.bootstrap, self.dead_letters))
        return out

    # one measured step
    def wait_quiet(self, pids: dict[str, int]) -> dict[str, float]:
        """Wait a while for others' CPU use < --quiet-cores; return the last second's use."""
        deadline = time.time() + self.args.quiet_wait_s
        while True:
            m0, o0 = busy_s(), {k: cpu_s(p) or 0.0 for k, p in pids.items()}
            time.sleep(1)
            use = {k: round((cpu_s(p) or 0.0) - o0[k], 2) for k, p in pids.items()}
            use["other"] = round(busy_s() - m0 - sum(use.values()), 2)
            if use["other"] < self.args.quiet_cores or time.time() > deadline:
                return use

    def step(self, system: System, label: str, rate: float, duration: float, *,
             priorities: str = "5", grace: float = 20.0, latency_s: float = 0.0,
             on_running: Any = None, clients: list[str] | None = None,
             weights: list[float] | None = None) -> dict[str, Any]:
        self.steps += 1
        tag = f"{self.run}.{self.steps:02d}.{label}"
        n = round(rate * duration)
        pids = {**system.pids, **self.brokers}
        idle = self.wait_quiet(pids)
        out_c, out_p = self.dir / f"{tag}.consume.json", self.dir / f"{tag}.produce.json"
        common = [*self.nice, PY, "-m", "bench.run"]
        cons = self.procs.start(f"{tag}.consume", [
            *common, "load-consume", "--bootstrap", self.bootstrap, "--tag", tag,
            "--topics", ",".join(self.reply_topics), "--n", str(n), "--out", str(out_c),
            "--max-s", str(duration + latency_s + grace + 3)], pipe=True)
        wait_line(cons, b"ready", 60)
        pids["load-consumer"] = cons.pid
        sampler = CpuSampler(pids)
        sampler.start()
        prod = self.procs.start(f"{tag}.produce", [
            *common, "load-produce", "--bootstrap", self.bootstrap, "--tag", tag,
            "--topic", system.topic, "--rate", str(rate), "--duration", str(duration),
            "--clients", ",".join(clients or self.clients), "--priorities", priorities,
            "--out", str(out_p), *(["--weights", ",".join(map(str, weights))] if weights else [])])
        pids["load-producer"] = prod.pid
        extra = on_running() if on_running else None
        prod.wait(duration + 120)
        cons.wait(duration + latency_s + grace + 120)
        sampler.done.set()
        sampler.join()
        for p in (prod, cons):
            self.procs.stop(p)
            if p.returncode:
                raise RuntimeError(f"{tag}: load generator exited with {p.returncode}; "
                                   f"see {self.dir}")
        produced, consumed = (orjson.loads(f.read_bytes()) for f in (out_p, out_c))
        m = bench_load.summarize(produced, consumed, duration=duration, latency_s=latency_s)
        m["cores"] = sampler.cores(produced["t0"] + 0.5, produced["t0"] + duration + latency_s)
        a, b = sampler.samples[0][1], sampler.samples[-1][1]
        m["cpu_ms_per_reply"] = per_reply(a, b, m["replies"], [*system.pids, *self.brokers])
        m.update(system=system.name, label=label, tag=tag, duration_s=duration,
                 idle_cores_before=idle)
        if extra is not None:
            m["extra"] = extra() if callable(extra) else extra
        print(f"  {system.name:<8} {label:<11} {rate:>5.0f}/s  replies/s {m['throughput_rps']:>6}"
              f"  p50 {m['e2e_ms']['p50']!s:>7} p99 {m['e2e_ms']['p99']!s:>8} ms  lost {m['lost']}"
              f" dup {m['duplicates']} err {m['errors']}  cores: {m['cores']}", flush=True)
        return m

    def wait_assigned(self, system: System, timeout: float = 90) -> None:
        """Wait until every worker of ``system`` holds request partitions: a worker that
        joins the group mid-step would make the step measure a rebalance."""
        logs = [self.dir / f"{system.name}-{k}.log" for k in system.pids if k.startswith("worker")]
        deadline = time.time() + timeout
        while time.time() < deadline:
            held = []
            for path in logs:
                last = [ln for ln in (path.read_bytes().splitlines() if path.exists() else [])
                        if b'"partitions_assigned"' in ln]
                held.append(bool(last) and orjson.loads(last[-1]).get("request_partitions", 0) > 0)
            if all(held):
                return
            time.sleep(0.5)
        raise RuntimeError(f"{system.name}: not every worker got partitions; logs in {self.dir}")

    def warm(self, system: System, latency_s: float = 0.0) -> dict[str, Any]:
        if any(k.startswith("worker") for k in system.pids):
            self.wait_assigned(system)
        m = self.step(system, "warmup", 50, 2, grace=60, latency_s=latency_s)
        if m["lost"]:
            raise RuntimeError(f"warm-up lost {m['lost']} of {m['sent']}; logs in {self.dir}")
        return m

    def pair(self, systems: list[System], label: str, rate: float, duration: float,
             **kw: Any) -> list[dict[str, Any]]:
        out = [self.step(s, label, rate, duration, **kw) for s in systems]
        for m in out[1:]:
            m["floor_tag"] = out[0]["tag"]
        return out

    def search(self, floor: System, turnout: System, fixed: dict[str, Any]) -> dict[str, Any]:
        """Ramp each system up from its best passing fixed rate (from a quarter of the first
        failing one if none passed) until a step fails (bench_load.verdict), then refine the
        knee (``--refine``); the floor ramps to its own failure (``--floor-to-failure``) or
        stops one step above turnout's last."""
        res: dict[str, dict[str, Any]] = {}
        for s in (floor, turnout):
            ok = [m["offered_rps"] for m in fixed[s.name] if not bench_load.verdict(m)]
            # A failure below a passing rate is noise (another process took the CPU then):
            # the ramp goes on from the best passing rate.
            bad = sorted((m for m in fixed[s.name] if bench_load.verdict(m)
                          and m["offered_rps"] > max(ok, default=0)),
                         key=lambda m: m["offered_rps"])
            hi = min((m["offered_rps"] for m in bad), default=float("inf"))
            res[s.name] = {"steps": [], "max_sustainable_rps": max(ok, default=None),
                           "limited_by": f"{', '.join(bench_load.verdict(bad[0]))} at {hi:g}/s"
                           if bad else "not reached (the ramp's top rate passed)"
                           if self.args.floor_to_failure or s is turnout
                           else "not reached (ramp ends one step above turnout's)",
                           "todo": [r for r in self.args.search_rates
                                    if max(ok, default=0) < r < hi]}

        def last(name: str) -> float:
            return max(m["offered_rps"] for m in fixed[name] + res[name]["steps"])

        for rate in sorted(set(self.args.search_rates)):
            for s in (floor, turnout):
                r = res[s.name]
                if rate not in r["todo"] or (s is floor and not self.args.floor_to_failure
                                             and not res[turnout.name]["todo"]
                                             and last(floor.name) > last(turnout.name)):
                    continue
                m = self.step(s, "search", rate, self.args.search_duration)
                r["steps"].append(m)
                r["todo"] = [x for x in r["todo"] if x > rate]
                if why := bench_load.verdict(m):
                    m["failed"], r["todo"] = why, []
                    r["limited_by"] = f"{', '.join(why)} at {rate:g}/s"
                    self.refine_kafka(s, r, rate)
                    r["refined"] = True
                else:
                    r["max_sustainable_rps"] = rate
        for s in (floor, turnout):  # a fixed rate failed and the ramp did not go past it
            r, best = res[s.name], res[s.name]["max_sustainable_rps"] or 0
            above = [m["offered_rps"] for m in fixed[s.name]
                     if bench_load.verdict(m) and m["offered_rps"] > best]
            if above and not r.pop("refined", False):
                self.refine_kafka(s, r, min(above))
        for r in res.values():
            r.pop("refined", None)
            r["steps"].sort(key=lambda m: m["offered_rps"])
            r["generator_lag_p99_ms"] = max((m["generator_lag_ms"]["p99"] or 0
                                             for m in r["steps"]), default=None)
        return res

    def refine_kafka(self, s: System, r: dict[str, Any], failed_at: float) -> None:
        def step(rate: float) -> dict[str, Any]:
            self.wait_idle(s.pids)
            return self.step(s, "refine", rate, self.args.search_duration)

        knee(step, bench_load.verdict, r, failed_at, self.args.refine)

    def wait_idle(self, pids: dict[str, int], cores: float = 0.2, timeout: float = 30) -> float:
        """After a failed step, wait until ``pids`` use < ``cores`` (their backlog is served),
        so that the next step starts from an empty queue; the seconds waited."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            c0 = {k: cpu_s(p) or 0.0 for k, p in pids.items()}
            time.sleep(1)
            if sum((cpu_s(p) or 0.0) - c0[k] for k, p in pids.items()) < cores:
                break
        return round(time.time() - t0, 1)

    def use_cluster(self, bootstrap: str, brokers: dict[str, int]) -> None:
        """Measure on ``bootstrap`` from now on: its brokers' CPU, its reply topics."""
        self.bootstrap, self.brokers = bootstrap, brokers
        self.used.add(bootstrap)
        asyncio.run(ensure_topics(bootstrap, self.reply_topics, 2))

    def replication(self) -> dict[str, Any]:
        """The floor and one worker on this broker, then on ``--cluster-bootstrap`` (topics
        replicated as turnout creates them there: RF min(3, brokers), min ISR RF - 1, acks=all
        producers), each: a fixed rate pair, then a ramp of each to its own failure."""
        a = self.args
        if not a.cluster_bootstrap:
            raise SystemExit("the replication scenario needs --cluster-bootstrap (a cluster "
                             "started with KAFKA_NODES=3 scripts/kafka start)")
        status = cluster_status(a.cluster_bootstrap, a.cluster_state)
        clusters = [("1 node", a.bootstrap, dict(self.brokers), self.machine["broker"]),
                    ("3 nodes", a.cluster_bootstrap, broker_pids(status), status)]
        out: dict[str, Any] = {"rate": max(a.rates), "clusters": {}}
        for i, (label, bootstrap, brokers, st) in enumerate(clusters):
            print(f"replication: {label} ({bootstrap}): floor, then turnout:", flush=True)
            self.use_cluster(bootstrap, brokers)
            floor, t = self.floor(f"rfloor{i}"), self.turnout(f"repl{i}")
            c: dict[str, Any] = {"bootstrap": bootstrap, "status": st, "brokers": list(brokers)}
            c["warmup"] = [self.warm(floor), self.warm(t)]
            f, m = self.pair([floor, t], "fixed", out["rate"], a.duration)
            c["floor"], c["turnout"] = {"fixed": f}, {"fixed": m}
            c["topics"] = asyncio.run(topic_settings(bootstrap, [floor.topic, t.topic,
                                                                 self.reply_topics[0]]))
            if a.search:
                found = self.search(floor, t, {floor.name: [f], t.name: [m]})
                c["floor"]["search"], c["turnout"]["search"] = found[floor.name], found[t.name]
            self.finish(t, c["turnout"])
            self.finish(floor, c["floor"])
            out["clusters"][label] = c
        self.use_cluster(a.bootstrap, clusters[0][2])
        return out

    # scenarios
    def execute(self) -> dict[str, Any]:
        a, scen = self.args, set(self.args.scenarios)
        asyncio.run(ensure_topics(self.bootstrap, self.reply_topics, 2))
        res: dict[str, Any] = {"run": self.run, "settings": {k: v for k, v in vars(a).items()},
                               "machine": self.machine, "scenarios": {}}
        sc, started, top = res["scenarios"], time.time(), max(a.rates)
        kafka = bool(scen - {"gateway", "fairness", "replication"}) or a.profile
        if kafka:  # the floor of the Kafka-path scenarios
            floor = self.floor()
            fl: dict[str, Any] = {"warmup": self.warm(floor), "steps": []}
            sc["floor"] = fl
        if scen & {"instant", "priorities"} or a.profile:
            print("one worker, instant mock backend (each step: floor, then turnout):")
            t = self.turnout("instant")
            out: dict[str, Any] = {"warmup": self.warm(t), "steps": []}
            for rate in a.rates if "instant" in scen else [top]:
                f, m = self.pair([floor, t], "fixed", rate, a.duration)
                fl["steps"].append(f)
                out["steps"].append(m)
            if "priorities" in scen:
                out["priorities"] = self.step(t, "priorities", top, a.duration,
                                              priorities="0,5,9")
                out["priorities"]["floor_tag"] = fl["steps"][-1]["tag"]
            if a.profile:
                pid = t.pids["worker0"]
                out["profile"] = self.step(t, "profile", top, a.duration,
                                           on_running=lambda: pyspy(pid, a.duration, self.dir))
            if "instant" in scen and a.search:
                out["search"] = self.search(floor, t, {"floor": fl["steps"][:], "instant":
                                                       out["steps"]})
            sc["instant"] = self.finish(t, out)
        if "two-workers" in scen:
            print("two workers, instant mock backend:")
            t = self.turnout("two", workers=2)
            out = {"warmup": self.warm(t)}
            f, m = self.pair([floor, t], "two-workers", top, a.duration)
            fl["steps"].append(f)
            out["steps"] = [m]
            sc["two-workers"] = self.finish(t, out)
        if "slow" in scen:
            print(f"one worker, mock backend with {a.slow_latency_ms:.0f} ms latency:")
            lat = a.slow_latency_ms / 1000
            t = self.turnout("slow", latency_ms=a.slow_latency_ms)
            out = {"warmup": self.warm(t, lat), "latency_s": lat,
                   "littles_bound_rps": round(a.slow_rate * lat / lat, 1),
                   "target_in_flight": round(a.slow_rate * lat)}
            out["steps"] = [self.step(t, "slow", a.slow_rate, a.slow_duration, latency_s=lat,
                                      grace=15)]
            sc["slow"] = self.finish(t, out)
        if "fairness" in scen:
            sc["fairness"] = self.fairness()
        if "gateway" in scen:
            print("HTTP path, instant mock backend: direct, LiteLLM proxy, turnout gateway:")
            sc["gateway"] = self.gateway()
        if "replication" in scen:
            sc["replication"] = self.replication()
        if kafka:
            self.finish(floor, fl)
        res["elapsed_s"] = round(time.time() - started, 1)
        return res

    def fairness(self) -> dict[str, Any]:
        """Ten clients at their rate limit; then the same, with one sending 20 times its limit.

        Same worker, same run, same mock (``--fair-latency-ms``): the nine quiet clients'
        p99 side by side, including those whose requests share the noisy client's partition.
        """
        a, ten = self.args, self.clients[:10]
        limit, factor = a.fair_limit, 20.0
        part = partition_of(ten, a.partitions)
        # The noisy one is a client that shares its partition with a quiet one, if any.
        shared = [c for c in ten if sum(part[o] == part[c] for o in ten) > 1]
        if shared:
            ten.remove(shared[0])
            ten.insert(0, shared[0])
        print(f"fairness: 10 clients at {limit:g}/s (their limit), then one at {factor:g}x:")
        limits = "clients:\n" + "".join(
            f"  {c}: {{requests_per_s: {limit:g}, burst: {limit:g}, max_wait_ms: 1000}}\n"
            for c in ten)
        t = self.turnout("fair", latency_ms=a.fair_latency_ms, clients_yaml=limits)
        out: dict[str, Any] = {"warmup": self.warm(t, a.fair_latency_ms / 1000)}
        lat = a.fair_latency_ms / 1000
        base = self.step(t, "fair-base", limit * 10, a.duration, clients=ten, latency_s=lat)
        noisy = self.step(t, "fair-noisy", limit * (9 + factor), a.duration, clients=ten,
                          weights=[factor] + [1.0] * 9, latency_s=lat)
        out.update(steps=[base, noisy], clients=ten, noisy=ten[0], limit_rps=limit,
                   factor=factor, run=self.run,
                   sharing=[c for c in ten[1:] if part[c] == part[ten[0]]])
        return self.finish(t, out)

    # the HTTP path: the gateway scenario
    def gateway(self) -> dict[str, Any]:
        """The mock called directly, LiteLLM's proxy and turnout's gateway (+ 1 worker), all on
        one instant mock: a fixed rate, then a ramp that each target leaves at its first failing
        step (bench_http.verdict). Each rate is measured for every target still in, back to back."""
        a = self.args
        mock = self.mock(0.0)
        targets = [HttpTarget(bench_http.DIRECT, mock[1], "echo", {"mock": mock[0]})
                   ] if a.http_direct else []
        out: dict[str, Any] = {"rate": a.http_rate, "ramp_rates": a.http_ramp,
                               "litellm": {"version": bench_http.LITELLM_VERSION}}
        targets.append(self.http_turnout(mock))
        lite = self.http_litellm(mock[1], out["litellm"])
        if isinstance(lite, str):
            print(f"  LiteLLM {lite}", flush=True)
        else:
            targets.insert(1, lite)
        live = {t.name: t for t in targets}
        for t in targets:
            self.http_ready(t)
            t.result["warmup"] = self.http_step(t, "warmup", 20, 2, live)
        for t in targets:
            t.result["fixed"] = self.http_judge(
                t, self.http_step(t, "fixed", a.http_rate, a.http_duration, live), live)
        for rate in sorted(r for r in a.http_ramp if r > a.http_rate):
            for t in list(live.values()):
                m = self.http_step(t, "ramp", rate, a.http_ramp_duration, live)
                t.result["steps"].append(self.http_judge(t, m, live))
        for t in list(live.values()):
            self.http_stop(t, live)
        with urllib.request.urlopen(mock[1] + "/stats", timeout=5) as r:
            out["mock_stats"] = orjson.loads(r.read())
        self.procs.stop(mock[0])
        done = {t.name: {"label": bench_http.LABELS[t.name], **t.result,
                         "processes": [k for k in t.procs if k != "mock"]} for t in targets}
        skipped = {bench_http.DIRECT: "not measured: --no-http-direct"}
        out["targets"] = {k: done.get(k) or {"label": bench_http.LABELS[k],
                                             "not_measured": skipped.get(k, lite)}
                          for k in bench_http.LABELS}
        bench_http.annotate(out["targets"])
        out["summary"] = bench_http.targets_met(out["targets"])
        out["peak_rss_mb"] = {k: v for t in targets for k, v in t.rss.items()}
        out["worker_log"] = [bench_load.scan_log(self.dir / "http-worker0.log", self.run)]
        out["gateway_log"] = bench_load.scan_log(self.dir / "http-gateway.log", self.run)
        out["dead_letters"] = asyncio.run(count_records(self.bootstrap, self.dead_letters))
        return out

    def http_turnout(self, mock: tuple[subprocess.Popen[bytes], str]) -> HttpTarget:
        worker = self.turnout("http", mock=mock)
        key, port = secrets.token_hex(16), free_port()
        env = {"KAFKA_BOOTSTRAP": self.bootstrap,
               "TURNOUT_CONFIG": str(self.dir / "http.yaml"), "TURNOUT_REQUEST_TOPIC": worker.topic,
               "TURNOUT_REQUEST_PARTITIONS": str(self.args.partitions),
               "TURNOUT_GATEWAY_ID": f"bench-{self.run}",
               "TURNOUT_GATEWAY_KEYS": f"{key}=bench-{self.run}-http",  # env only, never logged
               "TURNOUT_GATEWAY_TIMEOUT_S": "30", "TURNOUT_LOG_FORMAT": "json"}
        gw = self.procs.start("http-gateway", [PY, "-m", "turnout.cli", "gateway", "--port",
                                               str(port)], env)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/readyz", gw, 60)
        return HttpTarget(bench_http.TURNOUT, url, "default",
                          {"gateway": gw, "worker0": worker.procs["worker0"]}, key)

    def http_litellm(self, mock_url: str, info: dict[str, Any]) -> HttpTarget | str:
        """LiteLLM's proxy, one worker, on the mock; a reason instead if it cannot run."""
        venv, version = bench_http.litellm_venv(), bench_http.LITELLM_VERSION
        if bench_http.installed_version(venv) != version:
            print(f"  installing litellm[proxy]=={version} into {venv} (once)", flush=True)
        exe, detail = bench_http.ensure_litellm(venv, version, self.dir / "litellm-install.log")
        if exe is None:
            return f"not measured: {detail}"
        key, port = "sk-bench-" + secrets.token_hex(16), free_port()
        config = self.dir / "litellm.yaml"
        config.write_text(bench_http.litellm_config(mock_url))
        env = bench_http.litellm_env(key)
        info.update(venv=str(venv), config=config.read_text(), command=f"litellm --config "
                    f"litellm.yaml --host 127.0.0.1 --port {port} --num_workers 1",
                    env={k: v for k, v in env.items() if k != bench_http.LITELLM_KEY_ENV})
        proc = self.procs.start("litellm", [str(exe), "--config", str(config), "--host",
                                            "127.0.0.1", "--port", str(port), "--num_workers",
                                            "1"], env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/health/liveliness", proc, 120)
        except RuntimeError as exc:
            self.procs.stop(proc)
            return f"not measured: {exc} (see {self.dir}/litellm.log)"
        return HttpTarget(bench_http.LITELLM, url, bench_http.LITELLM_MODEL, {"litellm": proc},
                          key)

    def http_ready(self, t: HttpTarget, timeout: float = 90) -> None:
        """Wait until one chat completion is answered (a worker may still be joining)."""
        req = urllib.request.Request(t.url + "/v1/chat/completions", method="POST",
                                     data=bench_http.chat_body(t.model, "ready", 0), headers={
                                         "Content-Type": "application/json",
                                         **({"Authorization": f"Bearer {t.key}"} if t.key else {})})
        deadline, why = time.time() + timeout, ""
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(req, timeout=35) as r:
                    if r.status == 200:
                        return
            except OSError as exc:
                why = str(exc)
            time.sleep(0.5)
        raise RuntimeError(f"{t.name} answered no request in {timeout} s ({why}); see {self.dir}")

    def http_step(self, t: HttpTarget, label: str, rate: float, duration: float,
                  live: dict[str, HttpTarget]) -> dict[str, Any]:
        self.steps += 1
        tag = f"{self.run}.{self.steps:02d}.{t.name}.{label}"
        pids = {k: v for x in live.values() for k, v in x.pids.items()}
        pids.update(self.brokers)
        idle = self.wait_quiet(pids)
        timeout = self.args.http_timeout_s
        load = self.procs.start(f"{tag}.load", [
            *self.nice, PY, "-m", "bench.bench_http", "load", "--url", t.url, "--model", t.model,
            "--rate", str(rate), "--duration", str(duration), "--timeout-s", str(timeout),
            "--tag", tag, "--key-env", "BENCH_HTTP_KEY", "--out", str(self.dir / f"{tag}.json")],
            {"BENCH_HTTP_KEY": t.key}, pipe=True)
        sampler = CpuSampler({**pids, "load": load.pid})
        sampler.start()
        try:
            stdout, _ = load.communicate(timeout=duration + timeout + 60)
        finally:
            sampler.done.set()
            sampler.join()
            self.procs.stop(load)
        if load.returncode:
            raise RuntimeError(f"{tag}: load generator exited with {load.returncode}; "
                               f"see {self.dir}")
        m: dict[str, Any] = orjson.loads(stdout.strip().splitlines()[-1])
        m["cores"] = sampler.cores(m["t0"] + 0.5, m["t0"] + duration)
        a, b = sampler.samples[0][1], sampler.samples[-1][1]
        m["cpu_ms_per_ok"] = per_reply(a, b, m["ok"], list(pids))
        m.update(system=t.name, label=label, tag=tag, duration_s=duration, idle_cores_before=idle)
        print(f"  {t.name:<8} {label:<7} {rate:>5.0f}/s  ok/s {m['throughput_rps']:>6}  p50 "
              f"{m['e2e_ms']['p50']!s:>7} p99 {m['e2e_ms']['p99']!s:>8} ms  errors {m['errors']}"
              f" no answer {m['lost']}  cores: {m['cores']}", flush=True)
        return m

    def http_judge(self, t: HttpTarget, m: dict[str, Any],
                   live: dict[str, HttpTarget]) -> dict[str, Any]:
        """Record ``m``'s verdict; a target whose step failed is stepped up from its last
        passing rate by ``--refine`` of it (its knee to within that), then leaves the ramp."""
        if why := bench_http.verdict(m):
            m["failed"] = why
            t.result["limited_by"] = f"{', '.join(why)} at {m['offered_rps']:g}/s"
            self.http_refine(t, m["offered_rps"], live)
            self.http_stop(t, live)
        else:
            t.result["max_sustainable_rps"] = m["offered_rps"]
        return m

    def http_refine(self, t: HttpTarget, failed_at: float, live: dict[str, HttpTarget]) -> None:
        def step(rate: float) -> dict[str, Any]:
            start = time.time()
            self.wait_idle(t.pids)
            try:  # a request queued behind the failed step's backlog is answered once it drained
                self.http_ready(t, timeout=120)
            except RuntimeError as exc:
                print(f"  {t.name}: still not answering after its failed step ({exc})")
            waited = round(time.time() - start, 1)
            m = self.http_step(t, "refine", rate, self.args.http_ramp_duration, live)
            m["drain_wait_s"] = waited
            return m

        knee(step, bench_http.verdict, t.result, failed_at, self.args.refine)

    def http_stop(self, t: HttpTarget, live: dict[str, HttpTarget]) -> None:
        """Take ``t`` out of the ramp; stop its processes (not the shared mock) so that a
        backlog it still works on does not load the steps of the others."""
        live.pop(t.name, None)
        t.rss = {k: status_mb(p) for k, p in t.pids.items()}
        for name, proc in t.procs.items():
            if name != "mock":
                self.procs.stop(proc)

    def cleanup(self) -> None:
        self.procs.stop_all()
        for bootstrap in sorted(self.used):
            with contextlib.suppress(Exception):
                asyncio.run(delete_topics(bootstrap, self.run))


# -- helpers -------------------------------------------------------------------------------------


async def count_records(bootstrap: str, topic: str) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    partitions = (await ensure_topics(bootstrap, [topic], 1))[topic]
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, **kafka_kwargs())
    await c.start()
    try:
        return sum((await c.end_offsets([TopicPartition(topic, p) for p in range(partitions)]))
                   .values())
    finally:
        await c.stop()


async def delete_topics(bootstrap: str, run: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_kwargs())
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if f"bench-{run}" in t]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


async def topic_settings(bootstrap: str, topics: list[str]) -> dict[str, Any]:
    """Each topic's replication factor and min.insync.replicas, as the cluster reports them."""
    from aiokafka.admin import AIOKafkaAdminClient

    from turnout.kafka.admin import KafkaEnv, check_topics

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_kwargs())
    await admin.start()
    try:
        states, brokers = await check_topics(admin, topics, KafkaEnv.from_env().security)
    finally:
        await admin.close()
    return {"brokers": brokers, **{s.name: {"replication_factor": s.replication_factor,
                                             "min.insync.replicas":
                                             s.configs.get("min.insync.replicas")}
                                   for s in states}}


def knee(step: Any, verdict: Any, r: dict[str, Any], failed_at: float, frac: float) -> None:
    """Place a ramp's knee to within ``frac``: from the last passing rate (or, if none passed,
    from a quarter and a half of ``failed_at``), step up by ``frac`` of it below ``failed_at``
    until a step fails. ``r`` holds ``steps``, ``max_sustainable_rps`` and ``limited_by``."""
    if frac <= 0:
        return

    def passed(rate: float) -> bool:
        m = step(rate)
        r["steps"].append(m)
        if why := verdict(m):
            m["failed"] = why
            r["limited_by"] = f"{', '.join(why)} at {rate:g}/s"
            return False
        r["max_sustainable_rps"] = rate
        return True

    ladder = [] if r["max_sustainable_rps"] else [failed_at / 4, failed_at / 2]
    if all(passed(rate) for rate in ladder):
        for rate in refine_rates(r["max_sustainable_rps"], failed_at, frac):
            if not passed(rate):
                break
    r["steps"].sort(key=lambda m: m["offered_rps"])


def refine_rates(lo: float | None, hi: float, frac: float) -> list[float]:
    """The rates between a passing ``lo`` and a failing ``hi``, ``frac`` of ``lo`` apart: the
    steps that place a knee to within ``frac``. None when there is no gap to fill.

    >>> refine_rates(50, 75, 0.1)
    [55.0, 60.0, 65.0, 70.0]
    >>> refine_rates(850, 1000, 0.1)
    [935.0]
    >>> refine_rates(None, 75, 0.1), refine_rates(100, 105, 0.1), refine_rates(50, 75, 0)
    ([], [], [])
    """
    if not lo or frac <= 0:
        return []
    out, k = [], 1
    while (rate := round(lo * (1 + frac * k), 1)) < hi:
        out.append(rate)
        k += 1
    return out


def cluster_status(bootstrap: str, state: str) -> str:
    """``scripts/kafka status`` of a three-node cluster (its nodes' pids)."""
    env = {**os.environ, "KAFKA_NODES": "3", "KAFKA_BOOTSTRAP": bootstrap.split(",")[0]}
    if state:
        env["TURNOUT_STATE"] = state
    return subprocess.run([str(ROOT / "scripts" / "kafka"), "status"], capture_output=True,
                          text=True, env=env).stdout.strip()


def pyspy(pid: int, seconds: float, where: pathlib.Path) -> Any:
    """Start py-spy on ``pid``; return a callable that waits and gives the top functions."""
    out = where / "profile.txt"
    try:
        proc = subprocess.Popen([str(pathlib.Path(PY).with_name("py-spy")), "record", "--pid",
                                 str(pid), "--duration", str(int(seconds)), "--format", "raw",
                                 "--rate", "200", "--nonblocking", "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as exc:
        return {"error": f"py-spy not available: {exc}"}

    def finish() -> dict[str, Any]:
        _, err = proc.communicate(timeout=seconds + 60)
        ok = proc.returncode == 0 and out.exists()
        return bench_load.top_functions(out.read_text()) if ok else {"error": err.decode()[-500:]}

    return finish


def machine(bootstrap: str) -> dict[str, Any]:
    status = subprocess.run([str(ROOT / "scripts" / "kafka"), "status"], capture_output=True,
                            text=True).stdout.strip()
    cpu = next((ln.split(":", 1)[1].strip() for ln in
                pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = next(int(ln.split()[1]) // 1024 for ln in
               pathlib.Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_mb": mem, "kernel": platform.release(),
            "python": platform.python_version(), "broker": status,
            "aiokafka": metadata.version("aiokafka"),
            "faust-streaming": metadata.version("faust-streaming"), "bootstrap": bootstrap,
            "git": subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                                  capture_output=True, text=True).stdout.strip()}


def partition_of(clients: list[str], partitions: int) -> dict[str, int]:
    """The request-topic partition of each client's records (Kafka's default partitioner)."""
    from aiokafka.partitioner import murmur2

    return {c: (murmur2(c.encode()) & 0x7FFFFFFF) % partitions for c in clients}


def parse(argv: list[str]) -> argparse.Namespace:
    def rates(s: str) -> list[float]:
        return [float(x) for x in s.split(",") if x]

    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="the key ratios only, in a few minutes (run before every change to the "
                   "hot path): the instant scenario with a short ramp, and the gateway scenario "
                   "if LiteLLM is installed; results in var/bench/<run>/, docs untouched")
    p.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                   help=f"comma-separated, of {', '.join(SCENARIOS)} (default: all but "
                   "replication)")
    p.add_argument("--refine", type=float, default=0.1,
                   help="after a ramp step fails, step up from the last passing rate by this "
                   "fraction of it until a step fails (0: off)")
    p.add_argument("--floor-to-failure", action=argparse.BooleanOptionalAction, default=True,
                   help="ramp the floor to its own failure (else one step above turnout's)")
    p.add_argument("--cluster-bootstrap", default=os.environ.get("BENCH_CLUSTER_BOOTSTRAP", ""),
                   help="replication scenario: the three-node cluster (KAFKA_NODES=3 "
                   "scripts/kafka start), measured after the broker of --bootstrap")
    p.add_argument("--cluster-state", default=os.environ.get("BENCH_CLUSTER_STATE", ""),
                   help="replication scenario: the cluster's TURNOUT_STATE, to find its nodes")
    p.add_argument("--rates", type=rates, default=[100, 250, 500], help="fixed rates, req/s")
    p.add_argument("--duration", type=float, default=10, help="seconds per fixed-rate step")
    p.add_argument("--search", action=argparse.BooleanOptionalAction, default=True,
                   help="ramp to find the max sustainable rate (instant scenario)")
    p.add_argument("--search-rates", type=rates,
                   default=[150, 200, 300, 400, 600, 750, 850, 1000, 1250, 1500, 2000, 3000])
    p.add_argument("--search-duration", type=float, default=6)
    p.add_argument("--slow-latency-ms", type=float, default=2000)
    p.add_argument("--slow-rate", type=float, default=1000)
    p.add_argument("--slow-duration", type=float, default=6)
    p.add_argument("--http-rate", type=float, default=50,
                   help="gateway scenario: the fixed rate (req/s), also the ramp's first step")
    p.add_argument("--loadgen-nice", type=int, default=10,
                   help="nice value of the load generators: the system measured gets the CPU "
                   "first, as when the load comes from other machines (0: same priority)")
    p.add_argument("--http-duration", type=float, default=10, help="seconds at --http-rate")
    p.add_argument("--http-ramp", type=rates,
                   default=[75, 100, 150, 200, 400, 600, 800, 1000, 1200],
                   help="gateway scenario: the ramp's rates above --http-rate")
    p.add_argument("--http-ramp-duration", type=float, default=6)
    p.add_argument("--http-direct", action=argparse.BooleanOptionalAction, default=True,
                   help="gateway scenario: also measure the mock called directly (the "
                   "baseline of added latency)")
    p.add_argument("--http-timeout-s", type=float, default=10,
                   help="a request with no answer by then counts as not answered")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--fair-limit", type=float, default=20,
                   help="fairness scenario: each client's rate limit and normal rate, req/s")
    p.add_argument("--fair-latency-ms", type=float, default=50,
                   help="fairness scenario: the mock backend's latency")
    p.add_argument("--partitions", type=int, default=8, help="of the request topics")
    p.add_argument("--profile", action="store_true", help="py-spy the worker in an extra step")
    p.add_argument("--quiet-cores", type=float, default=0.5,
                   help="before a step, wait until other processes use fewer cores than this")
    p.add_argument("--quiet-wait-s", type=float, default=3, help="but no longer than this")
    p.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    p.add_argument("--json", default="docs/bench-results.json")
    p.add_argument("--docs", default="docs/benchmarks.md", help="'' to leave the docs alone")
    if "--quick" in argv:
        lite = bench_http.installed_version(bench_http.litellm_venv()) is not None
        p.set_defaults(**QUICK, scenarios="instant,gateway" if lite else "instant")
    a = p.parse_args(argv)
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    if bad := set(a.scenarios) - set(SCENARIOS):
        p.error(f"unknown scenarios: {', '.join(sorted(bad))}")
    a.command = " ".join(["scripts/bench", *argv])
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in ("load-produce", "load-consume", "echo"):
        return bench_load.main(argv[0], argv[1:])
    args = parse(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started in background
    bench = Bench(args)
    if args.quick and not args.json:
        args.json = str((bench.dir / "results.json").relative_to(ROOT))
    print(f"run {bench.run}: logs and raw records in {bench.dir}", flush=True)
    try:
        results = bench.execute()
    except KeyboardInterrupt:
        print("interrupted; stopping every process", file=sys.stderr)
        return 130
    finally:
        bench.cleanup()
    report(results, ROOT, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
