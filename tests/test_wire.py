"""``channels.wire.StdlibTransport`` against the real loopback gateway: kept-alive
connections, a server that closed one while idle, timeouts and nobody listening."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from channels.wire import StdlibTransport
from tests.support.gateway import LoopbackGateway
from tests.support.smtp import free_port


def _post(transport: StdlibTransport, url: str, key: str, timeout: float = 5) -> httpx.Response:
    request = httpx.Request(
        "POST", f"{url}/sms", json={"to": "+8613812345678", "text": "hi", "reference": key},
        headers={"Idempotency-Key": key}, extensions={"timeout": httpx.Timeout(timeout).as_dict()},
    )  # fmt: skip
    return transport.handle_request(request)


def test_posts_json_with_its_headers_and_reads_the_reply() -> None:
    with LoopbackGateway() as gateway:
        transport = StdlibTransport()
        reply = _post(transport, gateway.url, "k1")
        assert reply.status_code == 200 and reply.json()["status"] == "accepted"
        [delivered] = gateway.deliveries()
        assert delivered["key"] == "k1" and delivered["body"]["to"] == "+8613812345678"
        transport.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_not_failed() -> None:
    with LoopbackGateway() as gateway:
        transport = StdlibTransport()
        assert _post(transport, gateway.url, "k1").status_code == 200
        # When the server drops the kept-alive connection between two sends
        gateway._server.drop_connections()
        time.sleep(0.2)
        # Then the next send goes on a new connection, once
        assert _post(transport, gateway.url, "k2").status_code == 200
        assert [d["key"] for d in gateway.deliveries()] == ["k1", "k2"]
        assert len(gateway.requests()) == 2
        transport.close()


def test_threads_send_at_once_each_on_its_own_connection() -> None:
    with LoopbackGateway(faults={"slow_ms": 20}) as gateway:
        transport = StdlibTransport()
        names: set[str] = set()

        def send(i: int) -> int:
            names.add(threading.current_thread().name)
            return _post(transport, gateway.url, f"t{i}").status_code

        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(send, range(120)))
        assert codes == [200] * 120
        delivered = [d["key"] for d in gateway.deliveries()]
        assert sorted(delivered) == sorted(f"t{i}" for i in range(120))
        # one kept-alive connection per sending thread, not one per request
        assert len(gateway._server._open) == len(names) > 1
        transport.close()


def test_a_slow_reply_is_a_read_timeout() -> None:
    with LoopbackGateway(faults={"script": [{"timeout": 2}]}) as gateway:
        transport = StdlibTransport()
        with pytest.raises(httpx.ReadTimeout):
            _post(transport, gateway.url, "slow", timeout=0.3)
        # and the transport is fine afterwards
        assert _post(transport, gateway.url, "next").status_code == 200
        transport.close()


def test_nobody_listening_is_a_connect_error() -> None:
    transport = StdlibTransport()
    with pytest.raises(httpx.ConnectError):
        _post(transport, f"http://127.0.0.1:{free_port()}", "k")
