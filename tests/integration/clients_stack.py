"""One mock backend speaking all three protocols, a worker and a gateway, with one model
per backend protocol: ``m-openai``, ``m-ollama`` and ``m-anthropic`` each reach exactly
that backend, so a test can pick the protocol that serves an SDK call."""

from __future__ import annotations

import pathlib

from tests.integration.harness import GatewayStack

PROTOCOLS = ("openai", "ollama", "anthropic")


def config_text(url: str) -> str:
    lines = ["backends:"]
    for p in PROTOCOLS:
        lines.append(
            f"  - {{id: mock-{p}, protocol: {p}, base_url: '{url}', "
            f"models: [m-{p}], max_concurrency: 256}}"
        )
    lines += ["routes:", "  default:", "    targets:"]
    lines += [f"      - {{backend: mock-{p}, model: m-{p}}}" for p in PROTOCOLS]
    lines.append("default_route: default")
    return "\n".join(lines) + "\n"


class ClientsStack(GatewayStack):
    def __init__(self, tmp: pathlib.Path, *, gateway_env: dict[str, str] | None = None) -> None:
        models = ",".join(f"m-{p}" for p in PROTOCOLS)
        super().__init__(
            tmp, gateway_env=gateway_env, mock_args=("--models", models), config_text=config_text
        )
