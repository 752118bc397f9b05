"""The Kafka ACLs of a secured turnout deployment, as data: what each principal may do.

``plan`` is pure and is the one source of the list in docs/kafka.md, of ``turnout
acls`` (print, or ``--apply`` with an admin principal) and of the isolation tests.

- turnout's own principal (worker, gateway, intake forwarder) owns every topic
  under ``turnout.`` and under its app id (faust's changelogs and internal topics),
  and the consumer groups under ``turnout``/its app id.
- client ``C`` (principal ``User:C``) may write only ``turnout.intake.C``, read only
  ``turnout.replies.C``, and use consumer groups named ``C.*``. Nothing else: not
  the request topic, not the health topic, no other client's topics, no Create.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses

from turnout.settings import Settings
from turnout.worker.intake import INTAKE_PREFIX

# Kafka's wire codes (org.apache.kafka.common.resource / acl).
RESOURCE = {"topic": 2, "group": 3, "cluster": 4}
PATTERN = {"literal": 3, "prefixed": 4}
OPERATION = {
    "All": 2,
    "Read": 3,
    "Write": 4,
    "Create": 5,
    "Delete": 6,
    "Alter": 7,
    "Describe": 8,
    "DescribeConfigs": 10,
}
ALLOW = 3


@dataclasses.dataclass(frozen=True, order=True)
class Acl:
    principal: str
    resource: str  # topic | group | cluster
    name: str
    pattern: str  # literal | prefixed
    operation: str

    def __str__(self) -> str:
        return f"{self.principal:16} {self.operation:16} {self.resource} {self.pattern} {self.name}"


def service_acls(principal: str, settings: Settings) -> list[Acl]:
    """What turnout's own processes need: its topics, faust's topics, its consumer groups."""
    user = f"User:{principal}"
    prefixes = sorted({"turnout.", settings.app_id, settings.reply_prefix})
    prefixes = [p for p in prefixes if not any(p != q and p.startswith(q) for q in prefixes)]
    out = [
        Acl(user, "topic", p, "prefixed", op)
        for p in prefixes
        for op in ("Read", "Write", "Describe", "Create", "DescribeConfigs")
    ]
    for group in sorted({"turnout", settings.app_id}):
        out.append(Acl(user, "group", group, "prefixed", "Read"))
        out.append(Acl(user, "group", group, "prefixed", "Describe"))
    return sorted(set(out))


def client_acls(client_id: str, settings: Settings) -> list[Acl]:
    """What client ``client_id`` (principal ``User:<client_id>``) may do, and nothing more."""
    user = f"User:{client_id}"
    intake = f"{INTAKE_PREFIX}{client_id}"
    replies = settings.reply_topic_for(client_id)
    return [
        Acl(user, "topic", intake, "literal", "Write"),
        Acl(user, "topic", intake, "literal", "Describe"),
        Acl(user, "topic", replies, "literal", "Read"),
        Acl(user, "topic", replies, "literal", "Describe"),
        Acl(user, "group", f"{client_id}.", "prefixed", "Read"),
    ]


def plan(service: str, clients: list[str], settings: Settings) -> list[Acl]:
    """Every ACL of a deployment.

    >>> [str(a) for a in plan("turnout", ["billing"], Settings()) if "billing" in a.principal]
    ... # doctest: +NORMALIZE_WHITESPACE
    ['User:billing Write topic literal turnout.intake.billing',
     'User:billing Describe topic literal turnout.intake.billing',
     'User:billing Read topic literal turnout.replies.billing',
     'User:billing Describe topic literal turnout.replies.billing',
     'User:billing Read group prefixed billing.']
    """
    acls = service_acls(service, settings)
    for c in clients:
        acls += client_acls(c, settings)
    return acls


async def apply(admin: object, acls: list[Acl]) -> None:
    """Create ``acls`` with an admin client whose principal may Alter the cluster."""
    from aiokafka.errors import for_code
    from aiokafka.protocol.admin import CreateAclsRequest

    for acl in acls:
        request = CreateAclsRequest(
            RESOURCE[acl.resource],
            acl.name,
            PATTERN[acl.pattern],
            acl.principal,
            "*",
            OPERATION[acl.operation],
            ALLOW,
        )
        response = await admin._send_request(request)  # type: ignore[attr-defined]
        for code, message in response.creation_responses:
            if code:
                raise for_code(code)(f"creating ACL '{acl}': {message}")


def main(settings: Settings, args: argparse.Namespace) -> int:
    acls = plan(args.service, args.client, settings)
    for acl in acls:
        print(acl)
    if args.apply:
        from turnout.kafka.admin import KafkaEnv, connect_admin

        async def go() -> None:
            admin = await connect_admin(settings.bootstrap, KafkaEnv.from_env().security)
            try:
                await apply(admin, acls)
            finally:
                await admin.close()

        asyncio.run(go())
        print(f"created {len(acls)} ACLs")
    return 0
