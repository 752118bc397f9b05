"""The worker's status page renders in a real headless Chromium and shows every backend."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import struct
import tempfile
import zlib

import pytest

from turnout.config import load
from turnout.worker.metrics import Metrics
from turnout.worker.web import bound_port, build_app, start_web

CONFIG = """
backends:
  - {id: local-llama, protocol: ollama, base_url: 'http://127.0.0.1:1', models: [llama3.2]}
  - {id: cloud-gpt, protocol: openai, base_url: 'http://127.0.0.1:2', models: [gpt-4o-mini],
     tier: cloud, cost: {input_per_mtok: 0.15, output_per_mtok: 0.6}}
  - {id: edge.embed, protocol: openai, base_url: 'http://127.0.0.1:3', models: [embed]}
routes:
  default:
    targets: [{backend: local-llama, model: llama3.2}, {backend: cloud-gpt, model: gpt-4o-mini}]
default_route: default
"""
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--virtual-time-budget=8000", "--window-size=1100,900",
]  # fmt: skip


def chromium() -> str:
    """The browser binary; scripts/install-chromium installs it (the test installs nothing)."""
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("no chromium found: run scripts/install-chromium (or set CHROMIUM=/path)")


async def browse(*args: str, tmp: pathlib.Path) -> str:
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp)
    proc = await asyncio.create_subprocess_exec(
        chromium(), *FLAGS, f"--user-data-dir={profile}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


def png_colours(path: pathlib.Path) -> tuple[int, int, int]:
    """(width, height, distinct colours) of an 8-bit RGB/RGBA PNG, decoded by hand."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    width, height, depth, colour_type = header[:4]
    assert depth == 8 and colour_type in (2, 6), header
    bpp = 3 if colour_type == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    prev, colours, i = bytearray(stride), set(), 0
    for _ in range(height):
        filt, line = raw[i], bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            if filt == 1:
                line[x] = (line[x] + a) & 0xFF
            elif filt == 2:
                line[x] = (line[x] + b) & 0xFF
            elif filt == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif filt == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[x] = (line[x] + pred) & 0xFF
        colours.update(bytes(line[x : x + 3]) for x in range(0, stride, bpp))
        prev = line
    return width, height, len(colours)


async def test_the_status_page_shows_every_configured_backend(tmp_path):
    """Served live, the page fetches /status.json and lists each backend with its state."""
    config_path = tmp_path / "config.yaml"
    config_path.write_text(CONFIG)
    config = load(str(config_path))
    metrics = Metrics.from_config(config, "it.requests")
    for state, backend in zip(("healthy", "degraded", "unhealthy"), ("local-llama", "cloud-gpt",
                                                                     "edge.embed"), strict=True):
        metrics.backend_state(backend, state)
    for i in range(30):
        metrics.request_completed(
            "default", "local-llama" if i % 3 else "cloud-gpt", "ok" if i % 7 else "error",
            None if i % 7 else "backend_timeout", 5.0, 120.0 + i, 130.0 + i,
            {"prompt_tokens": 12, "completion_tokens": 30},
        )  # fmt: skip
    metrics.consumer_lag({0: 3, 1: 0})
    runner = await start_web(
        build_app(metrics, lambda: {"worker": {"app_id": "it"}}), "127.0.0.1", 0
    )
    url = f"http://127.0.0.1:{bound_port(runner)}/"
    shot = tmp_path / "status-page.png"
    try:
        dom = await browse("--dump-dom", url, tmp=tmp_path)
        await browse(f"--screenshot={shot}", url, tmp=tmp_path)
    finally:
        await runner.cleanup()
    for backend in ("local-llama", "cloud-gpt", "edge.embed"):
        assert f'data-backend="{backend}"' in dom, f"{backend} missing from the rendered page"
    for state in ("healthy", "degraded", "unhealthy"):
        assert f'class="state {state}"' in dom
    assert '<div class="muted" id="meta">updated ' in dom, "the page did not read /status.json"
    assert "<rect" in dom, "the throughput chart has no bars"
    width, height, colours = png_colours(shot)
    assert (width, height) == (1100, 900)
    assert colours >= 8, f"the screenshot looks blank ({colours} colours)"
