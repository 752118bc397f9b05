"""The delay proxy adds its round-trip time, keeps byte order, and black-holes when cut."""

from __future__ import annotations

import asyncio
import socket
import time

from turnout.testing.delay_proxy import DelayProxy, Route, parse_route


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _echo_server() -> asyncio.Server:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(1024):
            w.write(data)
            await w.drain()
        w.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def _round_trip(port: int, payloads: list[bytes], wait_s: float = 5.0) -> tuple[bytes, float]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    want = b"".join(payloads)
    t0 = time.monotonic()
    for p in payloads:
        w.write(p)
    await w.drain()
    got = await asyncio.wait_for(r.readexactly(len(want)), wait_s)
    took = time.monotonic() - t0
    w.close()
    return got, took


def test_round_trip_takes_the_configured_rtt_and_keeps_order():
    """100 ms RTT: an echo takes at least 100 ms and the bytes arrive in order."""

    async def run() -> tuple[bytes, float]:
        echo = await _echo_server()
        target = echo.sockets[0].getsockname()[1]
        proxy = DelayProxy(Route("t", _free_port(), "127.0.0.1", target, 100.0))
        await proxy.start()
        try:
            return await _round_trip(proxy.route.listen_port, [b"a" * 10, b"b" * 70_000, b"c"])
        finally:
            await proxy.stop()
            echo.close()

    got, took = asyncio.run(run())
    assert got == b"a" * 10 + b"b" * 70_000 + b"c"
    assert took >= 0.1


def test_a_cut_link_answers_nothing_and_a_healed_one_forwards_again():
    """Cut: the client times out (a partition, not a refusal); healed: echoes again."""

    async def run() -> None:
        echo = await _echo_server()
        target = echo.sockets[0].getsockname()[1]
        proxy = DelayProxy(Route("t", _free_port(), "127.0.0.1", target, 0.0))
        await proxy.start()
        try:
            proxy.set_cut(True)
            try:
                await _round_trip(proxy.route.listen_port, [b"x"], wait_s=0.5)
                raise AssertionError("a cut link answered")
            except TimeoutError:
                pass
            assert "cut" in repr(proxy)
            proxy.set_cut(False)
            got, _ = await _round_trip(proxy.route.listen_port, [b"y"])
            assert got == b"y"
        finally:
            await proxy.stop()
            echo.close()

    asyncio.run(run())


def test_routes_parse_with_their_rtt():
    """LISTEN=HOST:PORT@RTT."""
    assert parse_route("35001=127.0.0.1:9092@40") == Route(":35001", 35001, "127.0.0.1", 9092, 40.0)
