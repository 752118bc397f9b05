"""Client isolation on a secured broker (SASL_SSL, StandardAuthorizer, real ACLs).

Client ``alice`` tries every way the issue lists to make turnout act for ``bob``;
each attempt is refused by Kafka or dead-lettered with a reason, and bob's own
requests are served as if alice did not exist. turnout's processes authenticate
as ``turnout`` (SCRAM-SHA-256), alice with SCRAM-SHA-512, bob with PLAIN: every
mechanism over TLS with the throwaway CA that ``scripts/kafka`` made.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from schemas.types import DeadLetter, Reply, decode_reply_message
from tests.cluster.drill import Cluster
from tests.integration.harness import ROOT, MockBackend, Worker, chat_request, config_for, events
from turnout.kafka import acls
from turnout.kafka.security import SecuritySettings
from turnout.settings import Settings

pytestmark = pytest.mark.cluster

MECHANISM = {"turnout": "SCRAM-SHA-256", "alice": "SCRAM-SHA-512", "bob": "PLAIN",
             "admin": "SCRAM-SHA-512"}  # fmt: skip
APP_ID = "turnout-iso"


class Secured:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.bootstrap = f"127.0.0.1:{cluster.port}"
        self.secrets = cluster.state / "kafka" / "cluster" / "secrets"

    def password(self, user: str) -> str:
        return (self.secrets / f"{user}.password").read_text().strip()

    def env(self, user: str, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP": self.bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": MECHANISM[user],
            "KAFKA_SASL_USERNAME": user,
            "KAFKA_SASL_PASSWORD_FILE": str(self.secrets / f"{user}.password"),
            "KAFKA_SSL_CAFILE": str(self.secrets / "ca.pem"),
            **extra,
        }

    def kwargs(self, user: str) -> dict:
        return SecuritySettings.from_env(self.env(user)).client_kwargs()

    @contextlib.asynccontextmanager
    async def admin(self, user: str = "admin") -> AsyncIterator[AIOKafkaAdminClient]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self.kwargs(user))
        await admin.start()
        try:
            yield admin
        finally:
            await admin.close()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    from tests.cluster.conftest import _cluster_port

    state = tmp_path_factory.mktemp("kafka-secure")
    cluster = Cluster(ROOT, port=_cluster_port() + 10, state=state)
    env = {"KAFKA_SECURE": "1", "KAFKA_NODES": "1"}
    try:
        cluster.script("start", timeout_s=240, extra_env=env)
    except subprocess.CalledProcessError as exc:
        cluster.script("stop", check=False, extra_env=env)
        pytest.fail(f"the secured broker did not start: {exc.stdout}\n{exc.stderr}")
    yield Secured(cluster)
    cluster.script("stop", check=False, extra_env=env)


@pytest.fixture(scope="module")
def deployment(secured: Secured, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """ACLs from ``turnout acls``, then worker and intake forwarder as principal turnout."""
    tmp = tmp_path_factory.mktemp("iso")
    settings = Settings(app_id=APP_ID)

    async def setup() -> None:
        async with secured.admin() as admin:
            await acls.apply(admin, acls.plan("turnout", ["alice", "bob"], settings))

    asyncio.run(setup())
    # turnout's own principal creates the clients' topics (it has Create on turnout.*).
    env = secured.env("turnout")
    out = subprocess.run(
        [sys.executable, "-c", (
            "import asyncio; from turnout.client import ensure_topics; asyncio.run(ensure_topics("
            f"{secured.bootstrap!r}, ['turnout.intake.alice', 'turnout.intake.bob', "
            "'turnout.replies.alice', 'turnout.replies.bob'], 2))"
        )],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    backend = MockBackend(tmp)
    worker = Worker(
        tmp,
        config_for(("mock", "openai", backend.url)),
        app_id=APP_ID,
        request_topic="turnout.requests",
        extra_env={k: v for k, v in env.items() if k.startswith("KAFKA_")},
    )
    intake_log = tmp / "intake.log"
    with open(intake_log, "wb") as log:
        intake = subprocess.Popen(
            [sys.executable, "-m", "turnout.cli", "intake"],
            env={**env, "TURNOUT_APP_ID": APP_ID, "TURNOUT_LOG_FORMAT": "json"},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while not events(worker, "partitions_assigned"):
            assert worker.alive(), worker.log_path.read_text()[-3000:]
            assert intake.poll() is None, intake_log.read_text()[-3000:]
            assert time.monotonic() < deadline, worker.log_path.read_text()[-3000:]
            time.sleep(0.5)
        yield {"worker": worker, "intake": intake, "intake_log": intake_log, "backend": backend}
    finally:
        intake.terminate()
        intake.wait(30)
        worker.stop()
        backend.stop()


async def produce(secured: Secured, user: str, topic: str, value: bytes, key: bytes) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=secured.bootstrap,
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=15_000,
        **secured.kwargs(user),
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def read_all(secured: Secured, user: str, topic: str, seconds: float) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=secured.bootstrap, enable_auto_commit=False, **secured.kwargs(user)
    )
    await consumer.start()
    out: list[bytes] = []
    try:
        async with secured.admin(user) as admin:
            (d,) = await admin.describe_topics([topic])
        if d["error_code"]:
            raise KafkaError(f"describe {topic}: error {d['error_code']}")
        tps = [TopicPartition(topic, p["partition"]) for p in d["partitions"]]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for recs in (await consumer.getmany(timeout_ms=300)).values():
                out += [r.value for r in recs]
    finally:
        await consumer.stop()
    return out


async def replies(secured: Secured, user: str, ids: set[str], seconds: float = 30) -> dict:
    got: dict[str, list[Reply]] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end and not ids <= got.keys():
        got = {}
        for raw in await read_all(secured, user, f"turnout.replies.{user}", 2):
            r = decode_reply_message(raw)
            if isinstance(r, Reply):
                got.setdefault(r.id, []).append(r)
    return got


async def dead_letters(secured: Secured, request_id: str, seconds: float = 30) -> list[DeadLetter]:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        found = [
            d
            for d in map(
                DeadLetter.from_wire, await read_all(secured, "turnout", "turnout.dead-letter", 2)
            )
            if d.request_id == request_id
        ]
        if found:
            return found
    return []


def wire(rid: str, client: str, **extra) -> bytes:
    return chat_request(rid, client, f"text of {rid}", **extra).to_wire()


# -- what Kafka itself refuses ----------------------------------------------------------------


@pytest.mark.parametrize(
    "topic", ["turnout.requests", "turnout.health", f"{APP_ID}.health", "turnout.intake.bob"]
)
async def test_alice_cannot_write_shared_or_bobs_topics(secured, deployment, topic):
    """Writing the request topic, a health topic or bob's intake is refused by Kafka."""
    with pytest.raises(KafkaError) as info:
        await produce(secured, "alice", topic, wire("a-direct", "bob"), b"bob")
    assert "Authorization" in type(info.value).__name__, repr(info.value)


async def test_alice_cannot_read_bobs_replies(secured, deployment):
    """Reading bob's reply topic is refused by Kafka."""
    with pytest.raises(KafkaError):
        await read_all(secured, "alice", "turnout.replies.bob", 2)


async def test_alice_cannot_create_topics(secured, deployment):
    """CreateTopics is refused (topic authorization failed), and no topic appears."""
    async with secured.admin("alice") as admin:
        response = await admin.create_topics([NewTopic("turnout.replies.alice-extra", 1, 1)])
    assert [code for _, code, *_ in response.topic_errors] == [29]
    async with secured.admin() as admin:
        assert "turnout.replies.alice-extra" not in await admin.list_topics()


# -- what the intake forwarder dead-letters -----------------------------------------------------


async def test_alice_cannot_use_bobs_client_id(secured, deployment):
    """A request on alice's intake claiming client_id bob is dead-lettered, never served."""
    await produce(secured, "alice", "turnout.intake.alice", wire("spoof-1", "bob"), b"bob")
    (dl,) = await dead_letters(secured, "spoof-1")
    assert dl.code == "client_id_mismatch"
    assert dl.client_id == "alice"
    assert "spoof-1" not in await replies(secured, "bob", {"spoof-1"}, seconds=3)


async def test_alice_cannot_pre_answer_bobs_ids(secured, deployment):
    """alice sends bob's next id first (as bob); bob's real request with that id is served."""
    await produce(secured, "alice", "turnout.intake.alice", wire("bob-next", "bob"), b"bob")
    assert (await dead_letters(secured, "bob-next"))[0].code == "client_id_mismatch"
    await produce(secured, "bob", "turnout.intake.bob", wire("bob-next", "bob"), b"bob")
    got = await replies(secured, "bob", {"bob-next"})
    assert [r.status for r in got["bob-next"]] == ["ok"]


@pytest.mark.parametrize("reply_to", ["turnout.replies.bob", "turnout.replies.unbounded-1"])
async def test_alice_cannot_aim_replies_elsewhere(secured, deployment, reply_to):
    """reply_to another client's topic, or a new one, is dead-lettered; no topic is created."""
    rid = f"aim-{reply_to[-5:]}"
    value = wire(rid, "alice", reply_to=reply_to)
    await produce(secured, "alice", "turnout.intake.alice", value, b"alice")
    (dl,) = await dead_letters(secured, rid)
    assert dl.code == "reply_to_not_allowed"
    async with secured.admin() as admin:
        assert "turnout.replies.unbounded-1" not in await admin.list_topics()
    assert rid not in await replies(secured, "bob", {rid}, seconds=3)


async def test_both_clients_are_served_on_their_own_topics(secured, deployment):
    """The legitimate path works for each: own intake in, own reply topic out."""
    await produce(secured, "alice", "turnout.intake.alice", wire("a-ok", "alice"), b"alice")
    await produce(secured, "bob", "turnout.intake.bob", wire("b-ok", "bob"), b"bob")
    assert [r.status for r in (await replies(secured, "alice", {"a-ok"}))["a-ok"]] == ["ok"]
    assert [r.status for r in (await replies(secured, "bob", {"b-ok"}))["b-ok"]] == ["ok"]


# -- startup against the secured broker: one line, no secrets -----------------------------------


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout.cli", *args, env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode()


async def test_wrong_password_is_one_line_without_the_password(secured, tmp_path):
    """A wrong password: 'authentication failed ... as alice', exit 2, the password not shown."""
    wrong = "wrong-" + secured.password("alice")[:8]
    env = secured.env("alice", KAFKA_SASL_PASSWORD=wrong)
    del env["KAFKA_SASL_PASSWORD_FILE"]
    rc, out = await run_cli(env, "send", "hi")
    assert rc == 2, out
    assert out.strip().splitlines() == [out.strip()], out
    assert "authentication failed at" in out and "as alice" in out
    assert wrong not in out


async def test_untrusted_certificate_is_one_line(secured, tmp_path):
    """A CA that did not sign the broker's certificate: 'TLS handshake ... failed', exit 2."""
    other = tmp_path / "other-ca.pem"
    await asyncio.to_thread(
        subprocess.run,
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=other", "-keyout", str(tmp_path / "k"), "-out", str(other)],
        check=True, capture_output=True,
    )  # fmt: skip
    rc, out = await run_cli(secured.env("alice", KAFKA_SSL_CAFILE=str(other)), "send", "hi")
    assert rc == 2, out
    assert "TLS handshake with" in out and "certificate verify failed" in out, out
    assert "Traceback" not in out


async def test_a_client_principal_running_a_worker_is_told_what_it_may_not_do(secured, tmp_path):
    """alice starting a worker: one line naming the topic she is not authorized for."""
    config = tmp_path / "c.yaml"
    config.write_text(config_for(("mock", "openai", "http://127.0.0.1:9")))
    env = secured.env("alice", TURNOUT_CONFIG=str(config), TURNOUT_APP_ID="alice-app")
    rc, out = await run_cli(env, "worker")
    assert rc == 2, out
    assert "not authorized" in out and "turnout.requests" in out and "User:alice" in out, out
    assert "Traceback" not in out


async def test_no_secret_in_any_log(secured, deployment):
    """Worker and intake logs never contain a password."""
    text = deployment["worker"].log_path.read_text() + deployment["intake_log"].read_text()
    for user in ("turnout", "alice", "bob", "admin"):
        assert secured.password(user) not in text
    assert "request_completed" in text  # the logs are real, not empty


# -- every turnout process and command over SASL_SSL --------------------------------------------


async def test_gateway_serves_over_sasl_ssl(secured, deployment, tmp_path):
    """A gateway authenticated as turnout is ready and answers a sync chat call."""
    import aiohttp

    from tests.integration.harness import GatewayProcess

    env = {k: v for k, v in secured.env("turnout").items() if k.startswith("KAFKA_")}
    gateway = GatewayProcess(
        tmp_path,
        config_path=deployment["worker"].config_path,
        request_topic="turnout.requests",
        gateway_id="iso",
        extra_env=env,
    )
    try:
        body = {"model": "default", "messages": [{"role": "user", "content": "over TLS"}]}
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
            http.post(f"{gateway.url}/v1/chat/completions", json=body) as r,
        ):
            assert r.status == 200, await r.text()
            assert (await r.json())["object"] == "chat.completion"
    finally:
        gateway.stop()
    text = gateway.log_path.read_text()
    assert secured.password("turnout") not in text


@pytest.mark.parametrize(
    "args", [("dlq", "stats"), ("status",), ("backends",), ("acls", "--client", "carol")]
)
async def test_cli_commands_over_sasl_ssl(secured, deployment, args):
    """Operator commands authenticate with the same variables and succeed."""
    env = secured.env("turnout", TURNOUT_APP_ID=APP_ID, TURNOUT_HEALTH_TOPIC=f"{APP_ID}.health")
    rc, out = await run_cli(env, *args)
    assert rc == 0, out
    assert secured.password("turnout") not in out


async def test_client_certificate_with_sasl(secured, deployment):
    """KAFKA_SSL_CERTFILE/KEYFILE present a client certificate; SASL still names the principal."""
    env = secured.env(
        "bob",
        KAFKA_SSL_CERTFILE=str(secured.secrets / "client.pem"),
        KAFKA_SSL_KEYFILE=str(secured.secrets / "client.key"),
    )
    kwargs = SecuritySettings.from_env(env).client_kwargs()
    producer = AIOKafkaProducer(bootstrap_servers=secured.bootstrap, acks="all", **kwargs)
    await producer.start()
    try:
        await producer.send_and_wait("turnout.intake.bob", wire("b-cert", "bob"), key=b"bob")
    finally:
        await producer.stop()
    assert [r.status for r in (await replies(secured, "bob", {"b-cert"}))["b-cert"]] == ["ok"]
