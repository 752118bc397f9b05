"""A real three-node KRaft cluster for the failover drills (marker ``cluster``).

The session fixture starts it with ``KAFKA_NODES=3 scripts/kafka start`` on the
test broker's port + 100 (node i: +2(i-1), quorum port +1), in a fresh state
directory, and stops it at the end. If it cannot start, every drill fails: they
are never skipped.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.cluster.drill import Cluster
from tests.integration.harness import (
    BOOTSTRAP,
    ROOT,
    GatewayProcess,
    MockBackend,
    Worker,
    unique,
)

pytestmark = pytest.mark.cluster


def _cluster_port() -> int:
    explicit = os.environ.get("TURNOUT_TEST_CLUSTER_PORT")
    if explicit:
        return int(explicit)
    return int(BOOTSTRAP.split(",")[0].rsplit(":", 1)[1]) + 100


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    state = tmp_path_factory.mktemp("kafka-cluster")
    c = Cluster(ROOT, port=_cluster_port(), state=state)
    try:
        c.script("start", timeout_s=240)
    except subprocess.CalledProcessError as exc:
        c.script("stop", check=False)
        pytest.fail(f"the 3-node cluster did not start: {exc.stdout}\n{exc.stderr}")
    yield c
    c.script("stop", check=False)


@pytest.fixture
def procs(tmp_path, cluster: Cluster):
    """Mock backends, workers and gateways on the cluster; all stopped at the end."""
    started: list = []

    class Procs:
        def backend(self, *args: str) -> MockBackend:
            b = MockBackend(tmp_path, *args)
            started.append(b)
            return b

        def worker(self, config_text: str, **kwargs) -> Worker:
            env = {"KAFKA_BOOTSTRAP": cluster.bootstrap, **kwargs.pop("extra_env", {})}
            w = Worker(tmp_path, config_text, extra_env=env, **kwargs)
            started.append(w)
            return w

        def gateway(self, worker: Worker, request_topic: str) -> GatewayProcess:
            g = GatewayProcess(
                tmp_path,
                config_path=worker.config_path,
                request_topic=request_topic,
                gateway_id=unique("drill-gw"),
                extra_env={"KAFKA_BOOTSTRAP": cluster.bootstrap},
            )
            started.append(g)
            return g

    yield Procs()
    for p in reversed(started):
        p.stop()
