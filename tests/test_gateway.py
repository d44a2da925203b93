"""The loopback gateway the channel tests and the dispatch benchmark rely on: idempotent
delivery, scripted and random faults, its log, and both ways of running it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import GatewayProcess, LoopbackGateway, read_log


@pytest.fixture
def gw() -> Iterator[LoopbackGateway]:
    with LoopbackGateway() as gateway:
        yield gateway


@pytest.fixture
def client(gw: LoopbackGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=2) as c:
        yield c


def post(client: httpx.Client, key: str | None, path: str = "/sms", **body: str) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post(path, json=body or {"to": "+8613800000001"}, headers=headers)


def test_a_key_is_delivered_once_and_its_repeat_gets_the_same_id(
    gw: LoopbackGateway, client: httpx.Client
) -> None:
    first, again, other = post(client, "C1"), post(client, "C1"), post(client, "C2", "/calls")

    assert first.status_code == again.status_code == other.status_code == 200
    assert first.json() == again.json() == {"id": first.json()["id"], "status": "accepted"}
    assert other.json()["id"] != first.json()["id"]
    assert [(d["key"], d["path"]) for d in gw.deliveries()] == [("C1", "/sms"), ("C2", "/calls")]
    assert [(r["key"], r["delivered"], r["duplicate"]) for r in gw.requests()] == [
        ("C1", True, False),
        ("C1", False, True),
        ("C2", True, False),
    ]


def test_requests_without_a_key_or_json_are_refused_and_logged(
    gw: LoopbackGateway, client: httpx.Client
) -> None:
    missing = post(client, None)
    garbled = client.post("/sms", content=b"{", headers={"Idempotency-Key": "C1"})

    assert (missing.status_code, garbled.status_code) == (400, 400)
    assert "Idempotency-Key" in missing.json()["error"]
    assert gw.deliveries() == []
    assert [r["status"] for r in gw.requests()] == [400, 400]


def test_script_is_consumed_in_order_then_requests_succeed(
    gw: LoopbackGateway, client: httpx.Client
) -> None:
    gw.set_faults(
        {
            "script": [
                {"status": 429, "retry_after": 2},
                {"status": 500},
                {"slow": 0.2},
                {"disconnect": True},
                {"status": 400, "error": "bad number"},
            ]
        }
    )

    limited, failed = post(client, "C1"), post(client, "C1")
    started = time.monotonic()
    slow = post(client, "C1")
    slow_seconds = time.monotonic() - started
    with pytest.raises(httpx.RemoteProtocolError):
        post(client, "C2")
    rejected, fine = post(client, "C2"), post(client, "C2")

    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "2")
    assert (failed.status_code, slow.status_code) == (500, 200) and slow_seconds >= 0.2
    assert (rejected.status_code, rejected.json()["error"]) == (400, "bad number")
    assert fine.status_code == 200
    assert [d["key"] for d in gw.deliveries()] == ["C1", "C2"]
    assert [r["status"] for r in gw.requests()] == [429, 500, 200, 0, 400, 200]


def test_timeout_fault_answers_too_late_and_delivers_nothing(
    gw: LoopbackGateway, client: httpx.Client
) -> None:
    gw.set_faults({"script": [{"timeout": 1}]})

    with pytest.raises(httpx.ReadTimeout):
        client.post("/sms", json={}, headers={"Idempotency-Key": "C1"}, timeout=0.2)

    assert gw.deliveries() == []
    assert [(r["status"], r["fault"]) for r in gw.requests()] == [(504, "timeout")]


def test_random_faults_follow_their_seed_and_rejects_apply_per_number(
    gw: LoopbackGateway, client: httpx.Client
) -> None:
    faults = {"rate_429": 0.3, "rate_500": 0.2, "seed": 5}
    gw.set_faults(faults)
    first = [post(client, f"C{i}").status_code for i in range(40)]
    gw.reset(faults)
    second = [post(client, f"C{i}").status_code for i in range(40)]
    gw.set_faults({"reject_to": ["+8613800000009"]})

    assert first == second and {429, 500, 200} == set(first)
    assert post(client, "R1", to="+8613800000009").status_code == 400
    assert post(client, "R2", to="+8613800000001").status_code == 200


def test_faults_and_reset_work_over_the_control_endpoints(
    gw: LoopbackGateway, client: httpx.Client
) -> None:
    post(client, "C1")

    assert client.post("/_faults", json={"rate_431": 1}).status_code == 400
    assert client.post("/_faults", json={"script": [{"status": 503}]}).status_code == 200
    assert client.get("/_faults").json()["script"] == [{"status": 503}]
    assert post(client, "C2").status_code == 503
    assert [d["key"] for d in client.get("/_deliveries").json()] == ["C1"]
    assert client.post("/_reset").status_code == 200
    assert client.get("/_requests").json() == gw.deliveries() == []


def test_closing_does_not_wait_for_a_stalled_request() -> None:
    with LoopbackGateway(faults={"script": [{"accept_then_timeout": 30}]}) as gateway:
        client = httpx.Client(base_url=gateway.url, timeout=0.2)
        with pytest.raises(httpx.ReadTimeout):
            post(client, "C1")
        client.close()
        started = time.monotonic()
    assert time.monotonic() - started < 2


def test_own_process_serves_the_same_api_and_leaves_a_log(tmp_path: Path) -> None:
    log = tmp_path / "gateway.jsonl"
    with GatewayProcess(faults={"script": [{"status": 500}]}, log=log) as gateway:
        assert gateway.url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=gateway.url, timeout=2) as client:
            assert post(client, "C1").status_code == 500
            assert post(client, "C1").status_code == 200
            gateway.set_faults({"script": [{"status": 429}]})
            assert post(client, "C2").status_code == 429
        assert [d["key"] for d in gateway.deliveries()] == ["C1"]
        assert len(gateway.requests()) == 3

    requests, deliveries = read_log(log)
    assert [(r["key"], r["status"]) for r in requests] == [("C1", 500), ("C1", 200), ("C2", 429)]
    assert [(d["key"], d["body"]) for d in deliveries] == [("C1", {"to": "+8613800000001"})]
