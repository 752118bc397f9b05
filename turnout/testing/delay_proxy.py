"""A TCP proxy that adds round-trip latency, and can cut its link: regions on one machine.

Three Kafka clusters on one host answer in microseconds; real regions are 20-250 ms
apart. ``scripts/regions`` gives each cluster one extra listener per *other* region,
advertised at a proxy port; this proxy forwards that port to the listener, holding
every chunk for half the round-trip time in each direction, in order. A Kafka client
that bootstraps through the proxy is told the proxy's port in the metadata, so all its
traffic keeps the added delay (clients never see the real listener).

``cut`` models a partition, not a refusal: new connections are accepted and then
ignored, and bytes on live connections are dropped, so clients see timeouts, as they
would across a broken WAN link. ``heal`` closes the black-holed connections (a real
client would have timed them out) and forwards again.

    python -m turnout.testing.delay_proxy --regions-base 63500 --rtt us-eu=80,us-ap=150,eu-ap=220

runs the six routes of ``scripts/regions`` (``scripts/regions env`` prints where clients of
each region connect). ``--route 35001=127.0.0.1:9092@40`` adds a single route.
Pure asyncio, no dependency; one process for all routes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

REGIONS = ("us", "eu", "ap")
CHUNK = 65536


@dataclass(frozen=True)
class Route:
    name: str
    listen_port: int
    target_host: str
    target_port: int
    rtt_ms: float


class DelayProxy:
    """One listening port forwarded to one target with ``rtt_ms`` added per round trip."""

    def __init__(self, route: Route, *, host: str = "127.0.0.1") -> None:
        self.route = route
        self.host = host
        self.cut = False
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def __repr__(self) -> str:
        r = self.route
        state = "cut" if self.cut else "up"
        return (
            f"<DelayProxy {r.name} :{r.listen_port}->{r.target_host}:{r.target_port} "
            f"rtt={r.rtt_ms:g}ms {state} live={len(self._live)} served={self.connections}>"
        )

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.route.listen_port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._close_all()
        if self._live:  # closed sockets end every pipe; cancel only what hangs on
            _, hanging = await asyncio.wait(set(self._live), timeout=2)
            for task in hanging:
                task.cancel()
            await asyncio.gather(*hanging, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def set_cut(self, cut: bool) -> None:
        """Cut (black-hole) or heal the link. Healing drops the connections held while cut."""
        if self.cut and not cut:
            self._close_all()
        self.cut = cut

    def _close_all(self) -> None:
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._live.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            if self.cut:
                await reader.read()  # black hole: take bytes, answer nothing, until closed
                return
            try:
                up_r, up_w = await asyncio.open_connection(
                    self.route.target_host, self.route.target_port
                )
            except OSError:
                return  # the target is down: the client sees its connection close
            self._writers.add(up_w)
            half = self.route.rtt_ms / 2000
            try:
                await asyncio.gather(self._pipe(reader, up_w, half), self._pipe(up_r, writer, half))
            finally:
                up_w.close()
                self._writers.discard(up_w)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)
            self._live.discard(task)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay_s: float
    ) -> None:
        """Copy src to dst, each chunk ``delay_s`` after it arrived, in order."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    with contextlib.suppress(OSError):
                        if dst.can_write_eof():
                            dst.write_eof()
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self.cut:
                    continue  # partitioned: bytes in flight are lost
                dst.write(data)
                await dst.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await src.read(CHUNK)
                await queue.put((loop.time() + delay_s, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
            dst.close()


def region_routes(base: int, rtts: dict[frozenset[str], float]) -> list[Route]:
    """The six routes of ``scripts/regions`` at ``base``: clients of X to region R.

    Region R (index i) listens on base+10i; its listener for clients of region X
    (index j) is on +2+j, reached through this proxy on +5+j.

    >>> [(r.name, r.listen_port, r.target_port, r.rtt_ms) for r in region_routes(
    ...     63500, {frozenset({"us", "eu"}): 80.0, frozenset({"us", "ap"}): 150.0,
    ...             frozenset({"eu", "ap"}): 220.0})][:2]
    [('eu->us', 63506, 63503, 80.0), ('ap->us', 63507, 63504, 150.0)]
    """
    routes = []
    for i, region in enumerate(REGIONS):
        port = base + 10 * i
        for j, client in enumerate(REGIONS):
            if client == region:
                continue
            rtt = rtts.get(frozenset({client, region}), 0.0)
            routes.append(
                Route(f"{client}->{region}", port + 5 + j, "127.0.0.1", port + 2 + j, rtt)
            )
    return routes


def parse_rtts(spec: str) -> dict[frozenset[str], float]:
    """``us-eu=80,us-ap=150`` into round-trip times per unordered pair of regions.

    >>> parse_rtts("us-eu=80")[frozenset({"eu", "us"})]
    80.0
    """
    out: dict[frozenset[str], float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        pair, _, ms = part.partition("=")
        a, _, b = pair.partition("-")
        if not (a and b and ms):
            raise ValueError(
                f"RTT entry {part!r} must be regionA-regionB=milliseconds, e.g. us-eu=80"
            )
        out[frozenset({a, b})] = float(ms)
    return out


def parse_route(spec: str) -> Route:
    """``LISTEN_PORT=HOST:PORT@RTT_MS`` into a route."""
    listen, _, rest = spec.partition("=")
    target, _, rtt = rest.partition("@")
    host, _, port = target.rpartition(":")
    if not (listen.isdigit() and host and port.isdigit()):
        raise ValueError(f"route {spec!r} must be LISTEN_PORT=HOST:PORT@RTT_MS")
    return Route(f":{listen}", int(listen), host, int(port), float(rtt or 0))


async def serve(routes: Iterable[Route]) -> None:
    proxies = [DelayProxy(r) for r in routes]
    for p in proxies:
        await p.start()
        print(repr(p), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # SIGUSR1 cuts every route, SIGUSR2 heals them: a whole-machine "WAN down" switch.
    def cut_all(cut: bool) -> None:
        for p in proxies:
            p.set_cut(cut)

    loop.add_signal_handler(signal.SIGUSR1, cut_all, True)
    loop.add_signal_handler(signal.SIGUSR2, cut_all, False)
    await stop.wait()
    for p in proxies:
        await p.stop()
    print(f"delay proxy stopped at {time.strftime('%H:%M:%S')}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m turnout.testing.delay_proxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--regions-base", type=int, help="REGIONS_PORT_BASE of scripts/regions")
    parser.add_argument(
        "--rtt",
        default="us-eu=80,us-ap=150,eu-ap=220",
        help="round-trip times between regions (default %(default)s)",
    )
    parser.add_argument("--route", action="append", default=[], help="LISTEN_PORT=HOST:PORT@RTT_MS")
    args = parser.parse_args(argv)
    try:
        routes = [parse_route(r) for r in args.route]
        if args.regions_base:
            routes += region_routes(args.regions_base, parse_rtts(args.rtt))
    except ValueError as exc:
        print(f"delay_proxy: {exc}", file=sys.stderr)
        return 2
    if not routes:
        parser.error("give --regions-base or at least one --route")
    asyncio.run(serve(routes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
