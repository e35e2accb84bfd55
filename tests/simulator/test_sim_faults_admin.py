"""Injected faults, runtime config, stats, the admin endpoints and the CLI."""

from __future__ import annotations

import email.utils
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from simulator import SimulatorConfig, start_in_thread

TOKEN = SimulatorConfig().token
ROOT = Path(__file__).resolve().parents[2]


def _event(sim) -> str:
    return sim.dataset.ids_with_tag("system")[0]


def test_rate_limit_answers_429_with_empty_body_and_retry_after(sim, client):
    sim.update(rate_limit="2/s")
    statuses = [client.get(f"/api/events/{_event(sim)}") for _ in range(5)]
    assert [r.status_code for r in statuses[:2]] == [200, 200]
    limited = [r for r in statuses if r.status_code == 429]
    assert len(limited) == 3
    for response in limited:
        assert response.content == b""
        assert "content-type" not in response.headers
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["x-ratelimit-remaining"] == "0"
        assert response.headers["x-request-id"]
    assert sim.stats()["rate_limited"] == 3
    time.sleep(0.6)  # refills one token at 2/s
    assert client.get(f"/api/events/{_event(sim)}").status_code == 200


def test_rate_limit_bucket_capacity_is_the_rate_per_second_rounded_up(sim, client):
    sim.update(rate_limit="500/min")  # 8.33/s -> capacity 9
    codes = [client.get("/api/events/", params={"limit": 1}).status_code for _ in range(12)]
    assert codes[:9] == [200] * 9
    assert codes[9:] == [429] * 3


def test_retry_after_as_http_date(sim, client):
    sim.update(rate_limit="1/min", retry_after_http_date=True)
    assert client.get(f"/api/events/{_event(sim)}").status_code == 200
    response = client.get(f"/api/events/{_event(sim)}")
    assert response.status_code == 429
    when = email.utils.parsedate_to_datetime(response.headers["retry-after"])
    assert when.tzinfo is not None
    wait = (when - datetime.now(UTC)).total_seconds()
    assert 30 < wait <= 61


def test_auth_errors_are_not_rate_limited(sim, anon):
    sim.update(rate_limit="1/min")
    codes = {
        anon.get("/api/events/", headers={"Authorization": "Bearer wrong"}).status_code
        for _ in range(4)
    }
    assert codes == {401}
    assert sim.stats()["rate_limited"] == 0


def test_lag_reads_counts_per_id(sim, client):
    sim.update(lag_reads=2)
    first, second = sim.dataset.ids_with_tag("system")[:2]
    codes = [client.get(f"/api/events/{first}").status_code for _ in range(3)]
    assert codes == [404, 404, 200]
    lagged = client.get(f"/api/events/{second}")
    assert lagged.status_code == 404
    assert lagged.json() == {"error": "ResourceNotFound", "detail": "Not found"}
    assert client.get(f"/api/events/{first}").status_code == 200
    assert sim.stats()["lagged"] == 3


def test_error_rate_one_gives_plain_text_500(sim, client):
    sim.update(error_rate=1.0)
    response = client.get(f"/api/events/{_event(sim)}")
    assert response.status_code == 500
    assert response.text == "Internal Server Error"
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["x-ratelimit-limit"] == "0"
    # Faults come after authentication.
    assert client.get("/api/events/", headers={"Authorization": "Bearer x"}).status_code == 401


def test_garbage_rate_one_gives_200_that_is_not_json(sim, client):
    sim.update(garbage_rate=1.0)
    for _ in range(6):
        response = client.get(f"/api/events/{_event(sim)}")
        assert response.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.content)


def test_fault_draws_are_reproducible_and_roughly_at_rate(sim, client):
    sim.update(error_rate=0.3)
    sim.reset()
    first = [client.get(f"/api/events/{_event(sim)}").status_code for _ in range(100)]
    sim.reset()
    second = [client.get(f"/api/events/{_event(sim)}").status_code for _ in range(100)]
    assert first == second
    assert 15 <= first.count(500) <= 45
    assert set(first) == {200, 500}
    assert sim.stats()["faults"]["error"] == first.count(500)


def test_timeout_fault_stalls_the_answer(sim, client):
    sim.update(timeout_rate=1.0, timeout_seconds=0.4)
    started = time.monotonic()
    response = client.get(f"/api/events/{_event(sim)}")
    assert time.monotonic() - started >= 0.4
    assert response.status_code == 200
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"/api/events/{_event(sim)}", timeout=0.1)


def test_latency(sim, client):
    sim.update(latency_ms=150.0)
    started = time.monotonic()
    assert client.get(f"/api/events/{_event(sim)}").status_code == 200
    assert time.monotonic() - started >= 0.15
    sim.update(latency_ms=0.0)
    started = time.monotonic()
    client.get(f"/api/events/{_event(sim)}")
    assert time.monotonic() - started < 0.15


def test_redirect_to_another_host_strips_token_when_followed(sim, client):
    with start_in_thread(SimulatorConfig()) as target:
        sim.update(redirect_to=target.url)
        event_id = _event(sim)
        response = client.get(f"/api/events/{event_id}")
        assert response.status_code == 307
        assert response.headers["location"] == f"{target.url}/api/events/{event_id}"
        assert client.get("/api/events/", params={"limit": 1}).status_code == 200
        followed = client.get(f"/api/events/{event_id}", follow_redirects=True)
        # httpx drops Authorization on a cross-origin redirect: the target sees no token.
        assert followed.status_code == 401
        assert target.stats()["by_token_status"] == {"missing": 1}
        assert sim.stats()["redirected"] == 2


def test_stats_count_every_api_request_but_not_admin(sim, client, anon):
    event_id = _event(sim)
    client.get(f"/api/events/{event_id}")
    client.get("/api/events/not-a-uuid")
    client.get(f"/api/events/{sim.dataset.unknown_ids[0]['id']}")
    client.get("/api/events/")
    client.get("/v1/events/")
    anon.get("/api/events/")
    anon.get("/_sim/health")
    anon.get("/_sim/stats")
    stats = anon.get("/_sim/stats").json()
    assert stats["requests_total"] == 6
    assert stats["by_status"] == {"200": 3, "401": 1, "404": 1, "422": 1}
    assert stats["by_kind"] == {"get": 3, "list": 3}
    assert stats["rate_limited"] == 0
    assert stats["by_token_status"] == {"missing": 1, "valid": 5}
    reset = anon.post("/_sim/stats/reset")
    assert reset.status_code == 200
    assert anon.get("/_sim/stats").json()["requests_total"] == 0
    assert sim.stats()["by_status"] == {}


def test_recent_requests_log(sim, client, anon):
    client.get("/api/events/", params={"parent_id": _event(sim), "depth": 1})
    (entry,) = anon.get("/_sim/requests", params={"limit": 1}).json()
    assert entry["kind"] == "list" and entry["status"] == 200 and entry["token"] == "valid"
    assert "depth=1" in entry["query"]


def test_config_endpoint(sim, client, anon):
    response = anon.post("/_sim/config", json={"error_rate": 0.25, "rate_limit": "30/s"})
    assert response.status_code == 200
    assert response.json()["error_rate"] == 0.25 and response.json()["rate_limit"] == "30/s"
    assert anon.get("/_sim/config").json()["error_rate"] == 0.25
    assert sim.config.error_rate == 0.25
    for bad in (
        {"no_such_knob": 1},
        {"error_rate": 2},
        {"rate_limit": "fast"},
        {"port": 1},
        {"token_valid": "yes"},
        {"dataset": "huge"},
        [1, 2],
    ):
        rejected = anon.post("/_sim/config", json=bad)
        assert rejected.status_code == 400, bad
        assert rejected.json()["error"]
    assert anon.post("/_sim/config", content=b"{not json").status_code == 400
    assert sim.config.error_rate == 0.25  # a rejected update changes nothing
    assert anon.post("/_sim/config", json={"token_valid": False}).json()["token_valid"] is False
    assert client.get(f"/api/events/{_event(sim)}").status_code == 401


def test_dataset_endpoint(sim, anon):
    body = anon.get("/_sim/dataset").json()
    ds = sim.dataset
    assert body["workspace_id"] == ds.workspace_id
    assert len(body["events"]) == len(ds.events)
    entry = next(e for e in body["events"] if "chain_120" in e["tags"])
    assert entry["expected"] == ds.expected(entry["id"])
    assert {x["id"] for x in body["invalid_ids"]} >= {"not-a-uuid", "12345"}
    assert all(x["reason"] == "invalid_event_id" for x in body["invalid_ids"])
    assert all(x["reason"] == "event_not_found" for x in body["unknown_ids"])
    leaf = ds.ids_with_tag("chain_120")[-1]
    capped = anon.get("/_sim/dataset", params={"tag": "chain_120", "max_depth": 200}).json()
    assert len(capped["events"]) == 120
    by_id = {e["id"]: e for e in capped["events"]}
    assert by_id[leaf]["expected"]["hierarchy"]["complete"] is True
    bare = anon.get("/_sim/dataset", params={"id": leaf, "expected": "0"}).json()
    assert bare["events"] == [
        {"id": leaf, "parent_id": ds.events[leaf]["parent_id"], "tags": ds.tags[leaf]}
    ]
    assert anon.get("/_sim/health").status_code == 200


def test_dataset_switch_at_runtime():
    with start_in_thread(SimulatorConfig(dataset="bench", bench_size=40)) as handle:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        total = httpx.get(f"{handle.url}/api/events/", headers=headers).json()["meta"]["total"]
        assert total == 40
        old_ids = set(handle.dataset.events)
        handle.update(bench_size=25, seed=7)
        assert len(handle.dataset) == 25 and not old_ids & set(handle.dataset.events)
        listed = httpx.get(f"{handle.url}/api/events/", headers=headers).json()
        assert listed["meta"]["total"] == 25
        summary = httpx.get(f"{handle.url}/_sim/dataset").json()
        assert len(summary["events"]) == 25


def test_concurrent_requests_are_all_counted(sim):
    ids = sim.dataset.ids_with_tag("system")[:20]

    def fetch(n: int) -> int:
        with httpx.Client(base_url=sim.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            return sum(
                c.get(f"/api/events/{ids[(n + k) % 20]}").status_code == 200 for k in range(25)
            )

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        ok = sum(pool.map(fetch, range(8)))
    elapsed = time.monotonic() - started
    assert ok == 200
    assert sim.stats()["requests_total"] == 200
    assert elapsed < 10


def test_cli_prints_one_json_line_and_exits_cleanly_on_sigterm():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulator",
            "--port",
            "0",
            "--dataset",
            "bench",
            "--bench-size",
            "15",
            "--rate-limit",
            "5/s",
            "--no-token-valid",
            "--error-rate",
            "0.1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = proc.stdout.readline()
        ready = json.loads(line)
        assert set(ready) == {"url", "port"}
        assert ready["url"] == f"http://127.0.0.1:{ready['port']}"
        config = httpx.get(f"{ready['url']}/_sim/config").json()
        assert config["bench_size"] == 15 and config["rate_limit"] == "5/s"
        assert config["token_valid"] is False and config["error_rate"] == 0.1
        response = httpx.get(
            f"{ready['url']}/api/events/", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_bad_values():
    result = subprocess.run(
        [sys.executable, "-m", "simulator", "--rate-limit", "lots"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 2
    assert "rate_limit" in result.stderr
    assert result.stdout == ""
