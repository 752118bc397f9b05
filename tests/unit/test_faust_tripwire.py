"""A tripwire on the faust internals streams/consumer.py copies (docs/faust-consumer.md).

An upgrade of faust, mode or aiokafka fails here until someone has read what changed
in the functions turnout copies or overrides, and updated the doc and these pins.
"""

import hashlib
import importlib.metadata
import inspect

import pytest
from aiokafka.client import AIOKafkaClient
from aiokafka.producer.sender import Sender
from faust.transport.conductor import ConductorCompiler
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

CHECKED = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}
SOURCES = {
    "Consumer._drain_messages": (Consumer._drain_messages, "44a2500309e83c63"),
    "Consumer.perform_seek": (Consumer.perform_seek, "0e8c130ff4b0afd8"),
    "Consumer._new_offset": (Consumer._new_offset, "1d2c7ea89a7ad4f1"),
    "AIOKafkaConsumerThread._create_worker_consumer": (
        AIOKafkaConsumerThread._create_worker_consumer,
        "c2701bfc3e6f6cad",
    ),
    "ConductorCompiler.build": (ConductorCompiler.build, "837cf521368c1ee4"),
    # turnout/kafka/metadata_backoff.py wraps the first; the second is why (getsource unwraps).
    "AIOKafkaClient._metadata_update": (AIOKafkaClient._metadata_update, "06dc51ed3e0d38b8"),
    "Sender._sender_routine": (Sender._sender_routine, "2380dc5e333d9ebd"),
}


@pytest.mark.parametrize("package", sorted(CHECKED))
def test_installed_versions_are_the_checked_ones(package):
    """The consumer patch was checked against these exact versions."""
    assert importlib.metadata.version(package) == CHECKED[package], (
        f"{package} changed: follow the upgrade checklist in docs/faust-consumer.md"
    )


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_the_upstream_code_turnout_copies_is_unchanged(name):
    """Each upstream function turnout copies or mirrors still has the source it was read from."""
    fn, digest = SOURCES[name]
    got = hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]
    assert got == digest, f"{name} changed upstream: see docs/faust-consumer.md"


def test_the_private_names_the_consumer_touches_exist():
    """Attributes read by name (not through a public API) are still there."""
    for attr in ("_add_gap", "wait_first", "seek_wait", "earliest_offsets", "getmany",
                 "perform_seek", "_new_offset", "assignment"):  # fmt: skip
        assert hasattr(Consumer, attr), attr
    source = inspect.getsource(Consumer.__init__) + inspect.getsource(Consumer)
    for attr in ("_read_offset", "_committed_offset", "_commit_every", "_n_acked", "_acked",
                 "_acked_index", "suspend_flow", "consumer_stopped_errors"):  # fmt: skip
        assert attr in source, attr


def test_the_docs_list_the_same_hashes():
    """docs/faust-consumer.md and this test pin the same upstream sources."""
    import pathlib

    doc = (pathlib.Path(__file__).parents[2] / "docs" / "faust-consumer.md").read_text()
    for _, digest in SOURCES.values():
        assert f"`{digest}`" in doc
    for package, version in CHECKED.items():
        assert f"| {package} | {version} |" in doc
