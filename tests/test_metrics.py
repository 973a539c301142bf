"""`/metrics` on a real router (switchboard/metrics.py): scraped with the bearer token as
Prometheus's `authorization` setting sends it, parsed with prometheus-client's own parser, after
real traffic (cold starts, a checkpoint, a 404, a 503, journal fsyncs); per-tenant series only
for resident tenants, even with 10,000 mapped."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import COUNTER, Router, wait_until

MakeRouter = Callable[..., Router]
TOKEN = "scrape-me-3f9a1c"
FAST = {"SWITCHBOARD_PING_INTERVAL_S": "0.2", "SWITCHBOARD_METRICS_TOKEN": TOKEN}
EXISTING_COUNTERS = ("crashes", "boot_failures", "unresponsive_kills", "oom_kills",
                     "rss_recycles", "writes_unavailable", "spawns")


def scrape(router: Router, token: str = TOKEN) -> httpx.Response:
    return httpx.get(f"{router.admin_url}/metrics", trust_env=False, timeout=30,
                     headers={"Authorization": f"Bearer {token}"})


def families(router: Router) -> dict[str, Metric]:
    response = scrape(router)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def value(family: Metric, suffix: str = "", **labels: str) -> float:
    """The one sample of `family` named name+suffix with exactly these labels (le excepted)."""
    found = [s.value for s in family.samples if s.name == family.name + suffix
             and {k: v for k, v in s.labels.items() if k != "le"} == labels]
    assert len(found) == 1, (family.name, suffix, labels, family.samples)
    return found[0]


def histogram_count(family: Metric) -> float:
    assert family.type == "histogram", family
    buckets = [s for s in family.samples if s.name.endswith("_bucket")]
    assert buckets and buckets[-1].labels["le"] == "+Inf"
    counts = [s.value for s in buckets]
    assert counts == sorted(counts), f"{family.name}: buckets are cumulative"
    total = value(family, "_count")
    assert counts[-1] == total
    return total


def tenants_labelled(family: Metric) -> set[str]:
    return {s.labels["tenant"] for s in family.samples}


def test_metrics_after_traffic_have_every_family_with_sane_values(
    make_router: MakeRouter, tmp_path: Path,
) -> None:
    gate = tmp_path / "bad-cannot-boot"
    gate.write_text("the bad tenant fails to boot while this exists\n")
    router = make_router(app=COUNTER, env={
        **FAST, "SWITCHBOARD_TEST_BOOT_FAIL_TENANTS": "bad",
        "SWITCHBOARD_TEST_BOOT_FAIL_FILE": str(gate), "SWITCHBOARD_MAX_BOOT_FAILURES": "1",
    }).start()
    router.create("acme", "bad", "idle")
    before = families(router)  # starting the router asked its health check
    health_checks = value(before["switchboard_requests"], "_total", code="2xx")
    with router.client() as client:
        for amount in (1, 2, 3):  # the first is a cold start
            assert client.post("/t/acme/add", json={"amount": amount}).status_code == 201
        assert client.get("/t/nobody/count").status_code == 404
        assert client.get("/t/bad/count").status_code == 503
        router.admin_call("POST", "/v1/tenants/acme/checkpoint")
        router.admin_call("POST", "/v1/tenants/acme/stop")
        assert client.get("/t/acme/count").json()["count"] == 6  # restored from the snapshot
        assert client.post("/t/acme/add", json={"amount": 4}).status_code == 201  # fsynced
    wait_until(lambda: router.info("acme")["rss_bytes"], 10)  # a health ping read it
    # The worker reports its journal fsyncs with its next health ping.
    wait_until(lambda: histogram_count(families(router)["switchboard_journal_fsync_seconds"]), 10)

    got = families(router)
    for name in EXISTING_COUNTERS:
        assert got[f"switchboard_{name}"].type == "counter", name
    assert value(got["switchboard_boot_failures"], "_total") == 1
    assert value(got["switchboard_crashes"], "_total") == 0
    tenants = got["switchboard_tenants"]
    assert value(tenants, state="running") == 1
    assert value(tenants, state="failed") == 1
    assert value(tenants, state="stopped") == 1
    assert value(got["switchboard_resident_tenants"]) == 1
    spawns = got["switchboard_spawns"]
    assert value(spawns, "_total", via="zygote") + value(spawns, "_total", via="fresh") == 3

    # Cold starts: acme twice (once after its stop); bad never got ready.
    assert histogram_count(got["switchboard_start_seconds"]) == 2
    assert 0 < value(got["switchboard_start_seconds"], "_sum") < 30
    assert histogram_count(got["switchboard_restore_seconds"]) == 2
    assert value(got["switchboard_restore_bytes"], "_sum") > 0  # the second restore read a file
    assert histogram_count(got["switchboard_checkpoint_seconds"]) >= 1
    assert value(got["switchboard_checkpoint_bytes"], "_sum") > 0
    assert value(got["switchboard_checkpoints"], "_total") >= 1
    assert value(got["switchboard_checkpoint_failures"], "_total") == 0

    requests = got["switchboard_requests"]
    assert value(requests, "_total", code="2xx") == 5 + health_checks
    assert value(requests, "_total", code="4xx") == 1
    assert value(requests, "_total", code="5xx") == 1
    assert histogram_count(got["switchboard_request_seconds"]) == 7 + health_checks
    assert value(got["switchboard_requests_waiting"]) == 0
    assert histogram_count(got["switchboard_start_wait_seconds"]) == 3  # acme x2, bad
    unavailable = got["switchboard_unavailable"]
    assert value(unavailable, "_total", reason="boot_failed") == 1
    assert sum(s.value for s in unavailable.samples) == 1

    assert tenants_labelled(got["switchboard_tenant_requests"]) == {"acme"}
    assert value(got["switchboard_tenant_requests"], "_total", tenant="acme") == 5
    fsyncs = got["switchboard_journal_fsync_seconds"]
    assert histogram_count(fsyncs) >= 1 and 0 < value(fsyncs, "_sum") < 10
    assert value(got["switchboard_tenant_in_flight"], tenant="acme") == 0
    assert value(got["switchboard_worker_rss_bytes"], tenant="acme") > 1_000_000
    uss = value(got["switchboard_worker_uss_bytes"], tenant="acme")  # forked: mostly shared
    assert 0 < uss < value(got["switchboard_worker_rss_bytes"], tenant="acme")


def test_metrics_refuse_a_wrong_token_and_still_take_a_signature(
    make_router: MakeRouter,
) -> None:
    router = make_router(app=COUNTER, env=FAST).start()
    assert scrape(router, "wrong-token").status_code == 401
    assert httpx.get(f"{router.admin_url}/metrics", trust_env=False).status_code == 401
    # The token opens /metrics only.
    assert httpx.get(f"{router.admin_url}/v1/tenants", trust_env=False,
                     headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
    assert "switchboard_tenants" in router.metrics()  # signed, as before


def test_without_a_metrics_token_the_bearer_is_refused(make_router: MakeRouter) -> None:
    router = make_router(app=COUNTER).start()
    assert scrape(router).status_code == 401  # an empty metrics_token opens nothing
    assert "switchboard_tenants" in router.metrics()


@pytest.mark.slow
def test_per_tenant_series_only_for_the_resident_few_of_10000(make_router: MakeRouter) -> None:
    router = make_router(app=COUNTER, env=FAST).start()
    names = [f"t{i:05d}" for i in range(10_000)]
    router.admin_http()  # one shared client, made before the threads race to make their own
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: router.admin_call("POST", "/v1/tenants", {"name": n}), names))
    resident = set(names[::2000])
    assert len(resident) == 5
    with router.client() as client:
        for name in resident:
            assert client.post(f"/t/{name}/add", json={"amount": 1}).status_code == 201
    wait_until(lambda: all(router.info(n)["rss_bytes"] for n in resident), 10)

    got = families(router)
    assert value(got["switchboard_tenants"], state="stopped") == 10_000 - 5
    assert value(got["switchboard_resident_tenants"]) == 5
    for family in ("switchboard_tenant_requests", "switchboard_tenant_in_flight",
                   "switchboard_worker_rss_bytes", "switchboard_worker_uss_bytes"):
        assert tenants_labelled(got[family]) == resident, family
    labelled = {s.labels.get("tenant") for f in got.values() for s in f.samples} - {None}
    assert labelled == resident
