import socket

import pytest

from tests.integration.harness import BOOTSTRAP, MockBackend, Worker, unique

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session", autouse=True)
def kafka_broker():
    """The real broker must be up (scripts/test starts it); integration tests never skip."""
    host, port = BOOTSTRAP.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError:
        pytest.fail(f"no Kafka broker at {BOOTSTRAP}: run scripts/kafka start (scripts/test does)")


@pytest.fixture
def spawn(tmp_path):
    """Start real processes; everything started is stopped at the end of the test."""
    started = []

    class Spawner:
        def backend(self, *args: str) -> MockBackend:
            b = MockBackend(tmp_path, *args)
            started.append(b)
            return b

        def worker(self, config_text: str, **kwargs) -> Worker:
            w = Worker(tmp_path, config_text, **kwargs)
            started.append(w)
            return w

    yield Spawner()
    for p in reversed(started):
        p.stop()


@pytest.fixture
def names():
    """Unique topic, group and client names for one test."""

    class Names:
        app_id = unique("it")
        request_topic = unique("it.requests")

    return Names
