"""The three regions, brought up once for every test under tests/regions.

``scripts/regions start`` in a temporary state dir on REGIONS_PORT_BASE (default
63100) .. +21; stopped at the end of the session, whatever happened. Each test must
leave the three clusters and MirrorMaker 2 running (a test that stops a part starts
it again), so that the next one finds them as they were.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time

import pytest

from tests.integration.harness import ROOT

REGIONS = ["us", "eu", "ap"]
PORT_BASE = int(os.environ.get("REGIONS_PORT_BASE", "63100"))


def bootstrap(region: str) -> str:
    return f"127.0.0.1:{PORT_BASE + 10 * REGIONS.index(region)}"


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def regions(tmp_path_factory):
    """scripts/regions start in a fresh state dir; stop at the end, whatever happened.

    Yields ``regions_cmd(*args)``: runs ``scripts/regions ARGS`` on these regions.
    """
    ports = [PORT_BASE + 10 * i + k for i in range(len(REGIONS)) for k in (0, 1)]
    taken = [p for p in ports if _port_taken(p)]
    if taken:
        pytest.fail(
            f"ports {taken} are in use: stop what runs there (scripts/regions stop) or set "
            "REGIONS_PORT_BASE to a free range"
        )
    parent = os.environ.get("REGIONS_STATE")
    if parent:  # a fresh dir under the caller's state root, so runs never share data
        os.makedirs(parent, exist_ok=True)
        state = tempfile.mkdtemp(prefix="test-", dir=parent)
    else:
        state = str(tmp_path_factory.mktemp("regions"))
    env = {**os.environ, "REGIONS_PORT_BASE": str(PORT_BASE), "REGIONS_STATE": state}
    script = str(ROOT / "scripts" / "regions")
    started = time.monotonic()
    try:
        out = subprocess.run(
            [script, "start"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=420
        )
        print(out.stdout, out.stderr)
        if out.returncode != 0:
            pytest.fail(f"scripts/regions start failed ({out.returncode}):\n{out.stderr[-3000:]}")
        print(f"regions up after {time.monotonic() - started:.0f}s")

        def regions_cmd(*args: str) -> None:
            out = subprocess.run(
                [script, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
            )
            print(out.stdout, out.stderr)
            assert out.returncode == 0, f"scripts/regions {' '.join(args)}: {out.stderr[-2000:]}"

        yield regions_cmd
    finally:
        subprocess.run([script, "stop"], env=env, cwd=ROOT, capture_output=True, timeout=180)


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    """Poll ``predicate`` until it returns something truthy; fail saying ``what`` if never."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(poll_s)
    pytest.fail(f"not within {timeout_s:.0f}s: {what} (last: {last})")
