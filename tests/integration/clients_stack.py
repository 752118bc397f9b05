"""One mock backend speaking all three protocols, a worker and a gateway, with one model
per backend protocol: ``m-openai``, ``m-ollama`` and ``m-anthropic`` each reach exactly
that backend, so a test can pick the protocol that serves an SDK call."""

from __future__ import annotations

import pathlib

from tests.integration.harness import GatewayProcess, MockBackend, Worker, unique

PROTOCOLS = ("openai", "ollama", "anthropic")


class ClientsStack:
    def __init__(self, tmp: pathlib.Path, *, gateway_env: dict[str, str] | None = None) -> None:
        models = ",".join(f"m-{p}" for p in PROTOCOLS)
        self.backend = MockBackend(tmp, "--models", models)
        lines = ["backends:"]
        for p in PROTOCOLS:
            lines.append(
                f"  - {{id: mock-{p}, protocol: {p}, base_url: '{self.backend.url}', "
                f"models: [m-{p}], max_concurrency: 256}}"
            )
        lines += ["routes:", "  default:", "    targets:"]
        lines += [f"      - {{backend: mock-{p}, model: m-{p}}}" for p in PROTOCOLS]
        lines.append("default_route: default")
        self.request_topic = unique("api.requests")
        self.worker = Worker(
            tmp, "\n".join(lines) + "\n", app_id=unique("api-app"), request_topic=self.request_topic
        )
        self.gateway = GatewayProcess(
            tmp,
            config_path=self.worker.config_path,
            request_topic=self.request_topic,
            gateway_id=unique("gw-api"),
            extra_env=gateway_env,
        )

    @property
    def url(self) -> str:
        return self.gateway.url

    def stop(self) -> None:
        for p in (self.gateway, self.worker, self.backend):
            p.stop()
