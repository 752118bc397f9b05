"""schemathesis against a live gateway: no 5xx and no response that violates /openapi.json.

The gateway's backend is the mock, so the fuzzed requests travel the whole path
(gateway, Kafka, worker, mock and back). One worker thread: schemathesis'
coverage phase trips a CPython 3.11 ast bug when run with several threads.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.integration.harness import GatewayStack

KEY = "sk-fuzz"
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)


@pytest.fixture
def stack(tmp_path: pathlib.Path) -> Iterator[GatewayStack]:
    s = GatewayStack(tmp_path, gateway_env={"TURNOUT_GATEWAY_KEYS": f"{KEY}=fuzzer"})
    yield s
    s.stop()


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    stack: GatewayStack, tmp_path: pathlib.Path
) -> None:
    """Every phase (examples, coverage, fuzzing, stateful), 30 examples per operation."""
    st = pathlib.Path(sys.executable).with_name("st")
    result = subprocess.run(
        [
            str(st),
            "run",
            f"{stack.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {KEY}",
            "--checks",
            CHECKS,
            "--max-examples",
            "30",
            "--seed",
            "20261125",
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "30",
            "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert " passed" in result.stdout and "failed" not in result.stdout.splitlines()[-1], report
