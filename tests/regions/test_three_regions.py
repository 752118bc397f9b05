"""Three regions on the real brokers: routing state crosses MirrorMaker 2 and ages out.

Brings up ``scripts/regions`` (three KRaft clusters and MirrorMaker 2) in a temporary
state dir, one mock backend and one worker per region, then checks through each
worker's ``/status.json`` that every region sees the other two regions' fresh state,
and that a region whose worker stops becomes stale (unknown) everywhere.

Ports: the clusters take REGIONS_PORT_BASE (default 63100) .. +21; workers and mocks
take free ports. Runs in CI with the rest of the suite (marker ``regions``, never skipped).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import orjson
import pytest

from tests.integration.harness import ROOT, MockBackend, Worker, config_for, free_port, unique
from tests.regions.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.regions, pytest.mark.timeout(600)]

REGIONS = ["us", "eu", "ap"]
PORT_BASE = int(os.environ.get("REGIONS_PORT_BASE", "63100"))
STALE_AFTER_S = 6.0
PUBLISH_S = 1.0
SEE_ALL_WITHIN_S = 150.0
"""From the workers' start: faust startup (tens of seconds on a loaded 2-core box) + mirroring."""
STALE_WITHIN_S = STALE_AFTER_S + 15.0


def bootstrap(region: str) -> str:
    return f"127.0.0.1:{PORT_BASE + 10 * REGIONS.index(region)}"


def status(worker_port: int) -> dict:
    url = f"http://127.0.0.1:{worker_port}/status.json"
    with urllib.request.urlopen(url, timeout=3) as r:
        return orjson.loads(r.read())


def regions_seen(worker_port: int) -> dict:
    try:
        return status(worker_port).get("regions", {})
    except OSError:
        return {}


def test_every_region_sees_the_others_and_a_silent_region_goes_stale(regions, tmp_path):
    """Each worker trusts all three regions' state; a region that falls silent is unknown.

    Silent twice: ap's worker stops (ap stale in us and eu, fresh again after a restart),
    then MirrorMaker 2 stops (every region sees only itself fresh until it is back).
    """
    started = []
    try:
        workers = {}
        for region in REGIONS:
            backend = MockBackend(tmp_path)
            started.append(backend)
            web = free_port()
            app_id = unique(f"rg-{region}")
            w = Worker(
                tmp_path,
                config_for((f"{region}-local", "openai", backend.url)),
                app_id=app_id,
                request_topic=unique(f"rg.{region}.requests"),
                partitions=2,
                name=f"worker-{region}",
                extra_env={
                    "KAFKA_BOOTSTRAP": bootstrap(region),
                    "TURNOUT_REGION": region,
                    "TURNOUT_REGION_ROUTER": f"127.0.0.1:{web}",
                    "TURNOUT_REGION_PUBLISH_INTERVAL_S": str(PUBLISH_S),
                    "TURNOUT_REGION_STALE_AFTER_S": str(STALE_AFTER_S),
                    "TURNOUT_WEB_PORT": str(web),
                },
            )
            started.append(w)
            workers[region] = (w, web)
        t0 = time.monotonic()

        def all_fresh_everywhere():
            seen = {r: regions_seen(web) for r, (_, web) in workers.items()}
            ok = all(
                set(doc) == set(REGIONS) and all(v["status"] == "fresh" for v in doc.values())
                for doc in seen.values()
            )
            return seen if ok else None

        seen = wait_for(all_fresh_everywhere, SEE_ALL_WITHIN_S, "every region fresh everywhere")
        print(
            f"all three regions fresh in all three workers {time.monotonic() - t0:.1f}s "
            "after the workers were started"
        )
        for region, doc in seen.items():
            for other in REGIONS:
                # What crossed the link is the other region's own summary, not a copy of ours.
                assert doc[other]["router"] == f"127.0.0.1:{workers[other][1]}", (region, other)
                assert doc[other]["backends"] == {
                    f"{other}-local": {"state": "healthy", "tier": "local"}
                }
                assert doc[other]["age_ms"] <= STALE_AFTER_S * 1000

        ap_worker, _ = workers["ap"]
        ap_worker.stop()
        t1 = time.monotonic()

        def ap_stale_elsewhere():
            docs = {r: regions_seen(workers[r][1]) for r in ("us", "eu")}
            if all(d.get("ap", {}).get("status") == "stale" for d in docs.values()):
                return docs
            return None

        docs = wait_for(ap_stale_elsewhere, STALE_WITHIN_S, "ap stale in us and eu")
        took = time.monotonic() - t1
        print(
            f"ap stale in us and eu {took:.1f}s after its worker stopped (bound {STALE_AFTER_S}s)"
        )
        for region, doc in docs.items():
            assert doc["ap"]["age_ms"] > STALE_AFTER_S * 1000
            assert set(doc["ap"]) == {"status", "age_ms"}, "stale state must carry no numbers"
            for other in ("us", "eu"):
                assert doc[other]["status"] == "fresh", (region, other, doc[other])
        # Publishing keeps running: the two live regions stay fresh well past the bound.
        time.sleep(STALE_AFTER_S + 2)
        for region in ("us", "eu"):
            doc = regions_seen(workers[region][1])
            assert doc["us"]["status"] == doc["eu"]["status"] == "fresh", (region, doc)
            assert doc["ap"]["status"] == "stale"
        for region in ("us", "eu"):
            lines = workers[region][0].log_lines()
            assert any(
                x.get("event") == "region_state_stale" and x.get("region") == "ap" for x in lines
            ), f"{region} did not log ap going stale"

        ap_worker.start()
        t2 = time.monotonic()
        wait_for(all_fresh_everywhere, SEE_ALL_WITHIN_S, "ap fresh again after its restart")
        print(f"ap fresh everywhere again {time.monotonic() - t2:.1f}s after its worker restarted")

        # Cut every link: each region must stop trusting the other two, never itself.
        regions("stop", "mm2")
        t3 = time.monotonic()

        def only_self_fresh():
            seen = {r: regions_seen(web) for r, (_, web) in workers.items()}
            ok = all(
                seen[r].get(r, {}).get("status") == "fresh"
                and all(seen[r].get(o, {}).get("status") == "stale" for o in REGIONS if o != r)
                for r in REGIONS
            )
            return seen if ok else None

        wait_for(only_self_fresh, STALE_WITHIN_S, "each region trusting only itself without MM2")
        print(f"links cut: every region trusts only itself {time.monotonic() - t3:.1f}s later")
        regions("start", "mm2")
        t4 = time.monotonic()
        wait_for(all_fresh_everywhere, SEE_ALL_WITHIN_S, "every region fresh after MM2 is back")
        print(f"links healed: all fresh everywhere {time.monotonic() - t4:.1f}s after MM2 started")
    finally:
        for p in reversed(started):
            p.stop()


def test_a_client_fails_over_when_its_region_dies_and_loses_nothing(regions, tmp_path):
    """eu's cluster stops mid-load: the eu client moves to us (the nearest other), comes
    back once eu returns, and every request eu had acknowledged is answered after that.

    Short version of ``scripts/region-drill kafka-dies`` (docs/multi-region-drill.txt).
    """
    import asyncio

    from tests.regions.drill import Stack, kafka_dies

    async def run() -> tuple[dict, dict[str, float]]:
        stack = Stack(tmp_path, attempt_timeout_s=3.0, regions=regions)
        try:
            await stack.start()
            result = await kafka_dies(stack, rate=3.0, before_s=6.0, down_s=6.0)
            # turnout send --regions: a dead nearest region, then the live next one.
            dead = f"127.0.0.1:{free_port()}"
            spec = f"zz={dead}@1,us={bootstrap('us')}@80,ap={bootstrap('ap')}@220"
            env = {
                **os.environ,
                "KAFKA_BOOTSTRAP": bootstrap("us"),
                "TURNOUT_REQUEST_TOPIC": stack.request_topic,
            }
            out = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "turnout.cli",
                    "send",
                    "hello",
                    "--regions",
                    spec,
                    "--client",
                    stack.client_id,
                    "--failover-s",
                    "3",
                    "--timeout",
                    "30",
                ],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            print(out.stdout[-500:], out.stderr[-1500:])
            assert out.returncode == 0, out.stderr[-2000:]
            assert "# sent to us (tried zz, us)" in out.stderr
            assert orjson.loads(out.stdout)["status"] == "ok"
            return result, stack.rtts
        finally:
            await stack.stop()

    result, rtts = asyncio.run(run())
    # The delay proxies make the remote clusters far: measured, not just configured.
    assert rtts["eu"] < rtts["us"] and rtts["us"] >= 80 and rtts["ap"] >= 220, rtts
    assert result["lost"] == 0 and result["wrong_id"] == 0 and result["errors"] == 0, result
    assert result["accepted_per_region"]["eu"] > 0, result
    assert result["accepted_per_region"]["us"] > 0, "the client never failed over to us"
    assert result["accepted_per_region"]["ap"] == 0, "us is nearer than ap"
    assert result["back_to_eu_after_start_s"] is not None, "the client never came back to eu"
    assert result["gap_last_eu_ack_to_first_us_ack_s"] < 15, result
