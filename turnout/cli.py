"""The ``turnout`` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid

import orjson

from turnout import logs
from turnout.kafka import metadata_backoff
from turnout.settings import Settings

EPILOG = "Settings come from environment variables; `turnout settings` lists them."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="turnout", description=__doc__, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("worker", help="run the router's agents")

    send = sub.add_parser("send", help="publish one request, wait for its reply, print it")
    send.add_argument(
        "message",
        nargs="?",
        default="Hello, turnout!",
        help="the user message (chat) or input (embeddings)",
    )
    send.add_argument("--model", default="default")
    send.add_argument("--kind", choices=["chat", "completion", "embeddings"], default="chat")
    send.add_argument("--client", default="cli")
    send.add_argument("--id", help="the request id (default: random)")
    send.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="the request's deadline in seconds; the final reply (errors included) is "
        "awaited a little longer than that",
    )
    send.add_argument(
        "--regions",
        help="region=bootstrap[@rtt_ms],...: send to the nearest reachable region and fail "
        "over to the next (docs/multi-region.md); default: KAFKA_BOOTSTRAP only",
    )
    send.add_argument(
        "--measure-rtt", action="store_true", help="with --regions: rank by measured RTT"
    )
    send.add_argument(
        "--use-state",
        action="store_true",
        help="with --regions: skip regions whose fresh synced state shows no serving capacity",
    )
    send.add_argument(
        "--failover-s",
        type=float,
        default=3.0,
        help="with --regions: how long a region may take to accept before the next is tried",
    )

    mock = sub.add_parser("mock-backend", help="serve a mock OpenAI/Ollama backend", add_help=False)
    mock.add_argument("rest", nargs=argparse.REMAINDER)

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate a config file, naming every problem")
    check.add_argument("file")

    sub.add_parser("settings", help="list every setting with its env var and default")
    sub.add_parser(
        "intake",
        help="forward per-client intake topics (turnout.intake.<client>) to the request topic, "
        "vetted: client isolation on a secured cluster (docs/kafka.md)",
    )
    acls = sub.add_parser(
        "acls", help="the Kafka ACLs turnout and its clients need (docs/kafka.md)"
    )
    acls.add_argument("--service", default="turnout", help="turnout's own principal name")
    acls.add_argument("--client", action="append", default=[], help="client id (= principal)")
    acls.add_argument("--apply", action="store_true", help="create them (needs Alter on cluster)")
    sub.add_parser("backends", help="every backend's health, as the prober last published it")

    gateway = sub.add_parser("gateway", help="serve the OpenAI/Ollama-compatible HTTP gateway")
    gateway.add_argument("--host", default="127.0.0.1")
    gateway.add_argument("--port", type=int, default=8080)

    from turnout import ops

    ops.add_commands(sub)

    if argv[:1] == ["mock-backend"]:
        from turnout.testing import mock_backend

        return mock_backend.run(argv[1:]) or 0
    args = parser.parse_args(argv)

    if args.command == "settings":
        from turnout.kafka.durability import DurabilitySettings
        from turnout.kafka.security import VARIABLES

        for env, default, doc in [*Settings.describe(), *DurabilitySettings.describe()]:
            print(f"{env:28} {default:24} {doc}")
        for env, doc in VARIABLES:  # Kafka security: never a value, secrets least of all
            print(f"{env:28} {'(unset)':24} {doc}")
        return 0
    if args.command == "config":
        return _config_check(args.file)

    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"turnout: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    metadata_backoff.install()  # every Kafka client of every command
    from turnout.kafka.admin import KafkaStartupError

    try:
        return _command(settings, args)
    except KafkaStartupError as exc:  # one line: unreachable, refused, unsafe topics
        print(f"turnout {args.command}: refusing to start: {exc}", file=sys.stderr)
        return 2


def _command(settings: Settings, args: argparse.Namespace) -> int:
    from turnout import ops

    if args.command == "worker":
        from turnout import tracing

        try:
            tracing.configure("turnout-worker", settings.otlp_endpoint)
        except ValueError as exc:
            print(f"turnout: refusing to start: {exc}", file=sys.stderr)
            return 2
        return _worker(settings)
    if args.command == "intake":
        from turnout.worker import intake

        return intake.main(settings)
    if args.command == "acls":
        from turnout.kafka import acls

        return acls.main(settings, args)
    if args.command == "backends":
        return asyncio.run(_backends(settings))
    if args.command == "send":
        return asyncio.run(_send(settings, args))
    if args.command == "gateway":
        from turnout.gateway.app import run

        return run(settings, host=args.host, port=args.port)
    if args.command in ops.COMMANDS:
        return ops.main(settings, args)
    return 2


def _config_check(path: str) -> int:
    from turnout.config import ConfigError, load

    try:
        config = load(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{path}: ok ({len(config.backends)} backends, {len(config.routes)} routes)")
    return 0


def _worker(settings: Settings) -> int:
    import dataclasses

    import faust

    # faust subscribes to source topics but does not create them. The tables must have
    # exactly the request topic's partition count (each table partition has the one
    # writer of its request partition), so an existing topic's count wins.
    from streams import durable
    from streams.runtime import build
    from turnout.client import REQUEST_TOPIC_CONFIGS, ensure_topics, timestamp_type
    from turnout.config import ConfigError
    from turnout.kafka import admin as kafka_admin

    kafka = kafka_admin.KafkaEnv.from_env()
    counts, policy = asyncio.run(
        kafka_admin.ensure_topics_and_policy(
            settings.bootstrap,
            {settings.request_topic: (settings.request_partitions, dict(REQUEST_TOPIC_CONFIGS))},
            kafka=kafka,
            check_safe=[settings.request_topic],
            check_prefix=settings.reply_prefix,
        )
    )
    partitions = counts[settings.request_topic]
    stamped = asyncio.run(timestamp_type(settings.bootstrap, settings.request_topic))
    if stamped != "LogAppendTime":
        # Limits run on the record's timestamp: with CreateTime a producer can set it.
        logs.get("turnout.worker").warning(
            "request_topic_producer_time",
            topic=settings.request_topic,
            timestamp_type=stamped,
            fix=f"kafka-configs.sh --alter --entity-type topics --entity-name "
            f"{settings.request_topic} --add-config message.timestamp.type=LogAppendTime",
            why="rate limits and deadlines run on the record's timestamp, which producers "
            "set under CreateTime: spaced fake timestamps would defeat a client's limits",
        )
    if partitions != settings.request_partitions:
        logs.get("turnout.worker").warning(
            "request_partitions_differ",
            topic=settings.request_topic,
            partitions=partitions,
            setting=settings.request_partitions,
            using=partitions,
        )
        settings = dataclasses.replace(settings, request_partitions=partitions)
    from streams.tables import DataDirInUse

    try:
        app = build(settings)
    except (ConfigError, DataDirInUse) as exc:
        print(f"turnout: refusing to start: {exc}", file=sys.stderr)
        return 2
    durable.install(app, policy)  # every topic faust creates, its producer: durable
    log_kafka = logs.get("turnout.kafka")
    log_kafka.info(
        "kafka_durability",
        replication_factor=policy.replication_factor,
        min_insync_replicas=policy.min_insync,
        security=kafka.security.describe(),
    )
    # A table whose changelog is not in the metadata yet fails its first write.
    for table in app.tables.values():
        changelog = table.changelog_topic
        name = changelog.get_topic_name()
        configs = {"cleanup.policy": "compact", **(changelog.config or {})}
        counts = asyncio.run(ensure_topics(settings.bootstrap, [name], partitions, configs))
        if counts[name] != partitions:
            print(
                f"turnout: refusing to start: {name} has {counts[name]} partitions but "
                f"{settings.request_topic} has {partitions}; they must match (delete the "
                "changelog to rebuild it, or use a new TURNOUT_APP_ID)",
                file=sys.stderr,
            )
            return 2
    asyncio.set_event_loop(asyncio.new_event_loop())
    worker = faust.Worker(app, loglevel="warning", quiet=True)
    # faust's terminal spinner sets the root logger to DEBUG (so every aiokafka debug
    # call builds a record) and writes cursor escapes into the log: turn it off.
    worker.spinner = None
    worker.execute_from_commandline()
    return 0


async def _backends(settings: Settings) -> int:
    from turnout.worker.prober import format_health, read_health

    print(format_health(await read_health(settings), int(time.time() * 1000)))
    return 0


async def _send(settings: Settings, args: argparse.Namespace) -> int:
    from schemas.types import Request
    from turnout.client import (
        ReplyReader,
        RequestPublisher,
        ensure_request_topic,
        ensure_topics,
        group_members,
    )

    if args.kind == "chat":
        body = {"messages": [{"role": "user", "content": args.message}]}
    elif args.kind == "completion":
        body = {"prompt": args.message}
    else:
        body = {"input": args.message}
    request = Request(
        id=args.id or f"req-{uuid.uuid4().hex[:12]}",
        client_id=args.client,
        kind=args.kind,
        model=args.model,
        body=body,
        timeout_ms=int(args.timeout * 1000),
    )
    reply_topic = settings.reply_topic_for(request.client_id)
    if args.regions:
        return await _send_regions(settings, args, request, reply_topic)
    await ensure_topics(settings.bootstrap, [reply_topic], settings.reply_partitions)
    await ensure_request_topic(
        settings.bootstrap, settings.request_topic, settings.request_partitions
    )
    reader = ReplyReader(settings.bootstrap, reply_topic)
    publisher = RequestPublisher(settings.bootstrap, settings.request_topic)
    await reader.start(from_end=True)
    await publisher.start()
    wait_s = reply_wait_s(args.timeout)
    try:
        started = time.monotonic()
        await publisher.send(request)
        replies = await reader.collect({request.id}, wait_s)
    finally:
        await publisher.stop()
        await reader.stop()
    if request.id not in replies:
        members = await group_members(settings.bootstrap, settings.app_id)
        why = no_reply_message(request.id, reply_topic, wait_s, settings.app_id, members)
        print(f"turnout: {why}", file=sys.stderr)
        return 1
    reply = replies[request.id][0]
    sys.stdout.buffer.write(orjson.dumps(orjson.loads(reply.to_wire()), option=orjson.OPT_INDENT_2))
    print(f"\n# round trip {1000 * (time.monotonic() - started):.0f} ms", file=sys.stderr)
    return 0 if reply.status == "ok" else 1


async def _send_regions(
    settings: Settings, args: argparse.Namespace, request: object, reply_topic: str
) -> int:
    from turnout.core.nearest import parse_endpoints
    from turnout.region_client import NoRegionReachable, send_nearest

    try:
        endpoints = parse_endpoints(args.regions)
    except ValueError as exc:
        print(f"turnout send: --regions: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        sent, reply = await send_nearest(
            endpoints,
            request,  # type: ignore[arg-type]
            request_topic=settings.request_topic,
            reply_topic=reply_topic,
            partitions=(settings.request_partitions, settings.reply_partitions),
            attempt_timeout_s=args.failover_s,
            wait_s=reply_wait_s(args.timeout),
            measure=args.measure_rtt,
            use_state=args.use_state,
            stale_after_s=settings.region_stale_after_s,
        )
    except NoRegionReachable as exc:
        print(f"turnout: {exc}", file=sys.stderr)
        return 1
    print(f"# sent to {sent.region} (tried {', '.join(sent.attempts)})", file=sys.stderr)
    if reply is None:
        print(f"turnout: no reply on {reply_topic} in {sent.region} yet", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(orjson.dumps(orjson.loads(reply.to_wire()), option=orjson.OPT_INDENT_2))
    print(f"\n# round trip {1000 * (time.monotonic() - started):.0f} ms", file=sys.stderr)
    return 0 if reply.status == "ok" else 1


def reply_wait_s(deadline_s: float) -> float:
    """How long ``turnout send`` listens: past the request's deadline, so that the
    worker's own ``deadline_exceeded`` reply (sent at the deadline) is still read.

    >>> reply_wait_s(20.0), reply_wait_s(300.0)
    (25.0, 330.0)
    """
    return deadline_s + max(5.0, deadline_s / 10)


def no_reply_message(
    request_id: str, topic: str, waited_s: float, group: str, members: int | None
) -> str:
    """What ``turnout send`` says when no reply came: a missing worker is blamed only
    when the worker group has no member.

    >>> no_reply_message("r1", "t", 25.0, "turnout", 0).split(";")[1]
    ' no worker is in consumer group turnout: start one (turnout worker)'
    """
    head = f"no reply to {request_id} on {topic} within {waited_s:g} s"
    if members == 0:
        return f"{head}; no worker is in consumer group {group}: start one (turnout worker)"
    if members is None:
        return f"{head}; could not ask the broker whether a worker is in group {group}"
    return (
        f"{head}, although {members} consumer(s) are in group {group}; the request stays "
        "in Kafka and is served when its partition moves on (see turnout status for lag)"
    )


if __name__ == "__main__":
    sys.exit(main())
