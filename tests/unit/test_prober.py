"""The prober's schedule and probe requests, with a scripted backend: no Kafka."""

from turnout import config as cfg
from turnout.errors import BackendUnavailable
from turnout.health.book import HealthBook
from turnout.health.machine import HealthRecord
from turnout.settings import Settings
from turnout.testing.fake import ScriptedBackendClient
from turnout.worker.prober import Prober

CONFIG = cfg.loads(
    """
backends:
  - {id: local, protocol: openai, base_url: "http://l", models: [llama, tiny]}
  - id: cloud
    protocol: openai
    base_url: "http://c"
    models: [gpt]
    probe: {every: 3, model: gpt-mini}
  - id: embedder
    protocol: ollama
    base_url: "http://e"
    models: [nomic]
    probe: {kind: embeddings}
""",
    env={},
)


class Published:
    def __init__(self):
        self.records: list[HealthRecord] = []

    async def publish(self, topic, key, value, headers, **kw):
        self.records.append(HealthRecord.from_wire(value))


def prober(client):
    pub = Published()
    book = HealthBook([b.id for b in CONFIG.backends], now_ms=0)
    return Prober(settings=Settings(), config=CONFIG, client=client, book=book,
                  publisher=pub), pub


async def test_a_backend_is_probed_only_on_its_rounds():
    """probe.every: 3 probes a costly backend on rounds 0, 3, 6 only."""
    client = ScriptedBackendClient()
    p, _ = prober(client)
    for _ in range(7):
        await p.round()
    counts = {b: len(client.calls_to(b)) for b in ("local", "cloud", "embedder")}
    assert counts == {"local": 7, "cloud": 3, "embedder": 7}


async def test_probes_are_tiny_real_requests_of_the_configured_kind():
    """A probe asks for one token of chat, or embeds one word, with the configured model."""
    client = ScriptedBackendClient()
    p, _ = prober(client)
    await p.round()
    calls = {c.backend_id: c for c in client.calls}
    assert calls["local"].model == "llama" and calls["local"].body["max_tokens"] == 1
    assert calls["cloud"].model == "gpt-mini"
    assert calls["embedder"].kind == "embeddings" and calls["embedder"].body == {"input": "ping"}


async def test_each_probe_result_is_published_with_the_backend_record():
    """A failed probe is published as such, for every worker to apply."""
    client = ScriptedBackendClient({"local": [BackendUnavailable("refused", backend="local")]})
    p, pub = prober(client)
    await p.round()
    by_backend = {r.backend: r for r in pub.records}
    assert by_backend["local"].probe_ok is False and by_backend["cloud"].probe_ok is True
    assert all(r.probe_at_ms is not None for r in pub.records)


async def test_a_backend_busy_with_real_traffic_is_not_probed():
    """Recent successful traffic on a healthy backend makes its probe unnecessary."""
    import time

    client = ScriptedBackendClient()
    p, _ = prober(client)
    p._book.observe("local", True, 5.0, int(time.time() * 1000))
    await p.round()
    assert client.calls_to("local") == [] and len(client.calls_to("embedder")) == 1
    published = {r.backend: r for r in p._publisher.records}
    assert published["local"].probe_ok is None  # still listed, evidence from traffic


def prober_at_cap(client, full: set[str]):
    pub = Published()
    book = HealthBook([b.id for b in CONFIG.backends], now_ms=0)
    p = Prober(settings=Settings(), config=CONFIG, client=client, book=book, publisher=pub,
               at_cap=lambda backend_id: backend_id in full)
    return p, pub


async def test_a_healthy_backend_with_its_whole_cap_in_flight_is_not_probed():
    """A probe would queue behind the calls (a one-slot server would time it out): skip it."""
    client = ScriptedBackendClient()
    p, pub = prober_at_cap(client, {"local"})
    await p.round()
    assert client.calls_to("local") == [] and len(client.calls_to("embedder")) == 1
    assert {r.backend: r.probe_ok for r in pub.records}["local"] is None  # still published


async def test_an_unhealthy_backend_at_its_cap_is_still_probed():
    """Only probes bring an excluded backend back, whatever its old calls are doing."""
    import time

    client = ScriptedBackendClient()
    p, _ = prober_at_cap(client, {"local"})
    now = int(time.time() * 1000)
    for _ in range(50):
        p._book.observe("local", False, 5.0, now)
    assert p._book.state("local").name == "UNHEALTHY"
    await p.round()
    assert len(client.calls_to("local")) == 1
