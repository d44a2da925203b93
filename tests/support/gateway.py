"""A loopback HTTP gateway that plays an SMS provider and a dialer/CRM API, with faults.

It is a real HTTP/1.1 server on 127.0.0.1 (keep-alive, one thread per connection), for
tests and the dispatch benchmark. Provider requests are ``POST`` on any path not starting
with ``/_``, with a JSON body and an ``Idempotency-Key`` header (missing: 400):

- the first accepted request for a key *delivers* it and answers 200
  ``{"id": "gw-N", "status": "accepted"}``;
- a repeat of a delivered key answers the same 200 and id and is not delivered again
  (logged with ``duplicate: true``);
- a request answered with a fault delivers nothing, except ``accept_then_timeout``.

Faults (``Faults.parse`` documents the keys) are given at start and replaced at runtime::

    {"script": [{"status": 429, "retry_after": 1}, {"status": 500}, {"timeout": 5},
                {"slow": 0.3}, {"status": 400}, {"accept_then_timeout": 5}, {"disconnect": true}],
     "rate_429": 0.1, "rate_500": 0.05, "rate_timeout": 0.01, "timeout_seconds": 2,
     "slow_ms": 0, "seed": 1, "reject_to": ["+8613800000000"], "reject_status": 400}

The script is consumed in order by the next provider requests; then per-target rejects
apply, then the random rates. Control endpoints: ``GET /_requests``, ``GET /_deliveries``,
``GET /_faults``, ``POST /_faults`` (replace), ``POST /_reset`` (clear everything).

Two ways to run it, with the same client API (``url``, ``deliveries()``, ``requests()``,
``set_faults()``, ``reset()``):

- in this process: ``with LoopbackGateway(faults=...) as gw: ...``;
- as its own process: ``with GatewayProcess(faults=..., log=PATH) as gw: ...``, which runs
  ``python -m tests.support.gateway --port 0 --log PATH [--faults JSON]``; that prints
  ``listening http://127.0.0.1:PORT`` once ready and serves until SIGTERM.

Every provider request is logged as soon as its outcome is decided (before a fault's
stall) with ``key, path, status`` (0: no answer), ``delivered, duplicate, fault`` and the
``time`` it arrived (``time.monotonic()``, comparable across processes on one machine).
With ``log``, requests and deliveries are also appended to a JSONL file as they happen
(``{"event": "request", ...}`` / ``{"event": "delivery", ...}``, flushed every 50 ms and
on close); ``read_log`` reads it back.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx

__all__ = ["Faults", "GatewayProcess", "LoopbackGateway", "read_log"]

REPO = Path(__file__).resolve().parents[2]
_FAULT_STEPS = frozenset(
    {"status", "retry_after", "error", "timeout", "slow", "accept_then_timeout", "disconnect"}
)
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(slots=True)
class Faults:
    """What goes wrong, and how often. ``script`` steps are consumed one per request:

    - ``{"status": N, "retry_after": S, "error": "text"}``: answer N (with ``Retry-After``);
    - ``{"timeout": S}``: wait S seconds, then answer 504 (the client gave up; no delivery);
    - ``{"slow": S}``: wait S seconds, then process normally;
    - ``{"accept_then_timeout": S}``: deliver, wait S seconds, then answer (reply lost);
    - ``{"disconnect": true}``: close the connection without answering (no delivery).

    ``rate_429``/``rate_500``/``rate_timeout`` are probabilities per request (seeded by
    ``seed``; 429s carry ``Retry-After: retry_after``, timeouts last ``timeout_seconds``);
    ``slow_ms`` delays every request; ``reject_to`` lists numbers (the body's ``to``) always
    answered ``reject_status``.
    """

    script: deque[dict[str, Any]] = field(default_factory=deque)
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    timeout_seconds: float = 2.0
    retry_after: float = 1.0
    slow_ms: float = 0.0
    seed: int | None = None
    reject_to: frozenset[str] = frozenset()
    reject_status: int = 400

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None) -> Faults:
        """Faults from their JSON form; ``ValueError`` for an unknown key or bad step."""
        spec = dict(spec or {})
        unknown = spec.keys() - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        script = deque(dict(step) for step in spec.pop("script", []))
        for step in script:
            if not step or step.keys() - _FAULT_STEPS:
                raise ValueError(f"bad script step {step}; keys: {sorted(_FAULT_STEPS)}")
        reject_to = frozenset(spec.pop("reject_to", ()))
        return cls(script=script, reject_to=reject_to, **spec)

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["script"] = list(self.script)
        data["reject_to"] = sorted(self.reject_to)
        return data


class _State:
    """Deliveries, the request log and the faults, behind one lock."""

    def __init__(self, faults: Faults, log: Path | None) -> None:
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.log_path = log
        self._log: IO[str] | None = log.open("a", encoding="utf-8") if log else None
        self.reset(faults)
        if self._log is not None:  # flushing every line would cost a third of the throughput
            threading.Thread(target=self._flush_often, daemon=True).start()

    def _flush_often(self) -> None:
        while not self.stop.wait(0.05):
            with self.lock:
                if self._log is not None:
                    self._log.flush()

    def reset(self, faults: Faults | None = None) -> None:
        with self.lock:
            self.faults = faults or Faults()
            self.rng = random.Random(self.faults.seed)
            self.ids: dict[str, str] = {}
            self.deliveries: list[dict[str, Any]] = []
            self.requests: list[dict[str, Any]] = []
            self.counter = itertools.count(1)

    def set_faults(self, faults: Faults) -> None:
        with self.lock:
            self.faults = faults
            self.rng = random.Random(faults.seed)

    def next_fault(self, to: object) -> dict[str, Any]:
        """The fault step for the next provider request ({} when none)."""
        with self.lock:
            f = self.faults
            if f.script:
                return f.script.popleft()
            if isinstance(to, str) and to in f.reject_to:
                return {"status": f.reject_status, "error": "invalid destination number"}
            draw = self.rng.random() if f.rate_429 or f.rate_500 or f.rate_timeout else 1.0
        if draw < f.rate_429:
            return {"status": 429, "retry_after": f.retry_after}
        if draw < f.rate_429 + f.rate_500:
            return {"status": 500}
        if draw < f.rate_429 + f.rate_500 + f.rate_timeout:
            return {"timeout": f.timeout_seconds}
        return {"slow": f.slow_ms / 1000} if f.slow_ms else {}

    def deliver(self, key: str, path: str, body: Any, headers: dict[str, str]) -> tuple[str, bool]:
        """The provider id for ``key`` and whether this request delivered it."""
        with self.lock:
            known = self.ids.get(key)
            if known is not None:
                return known, False
            provider_id = self.ids[key] = f"gw-{next(self.counter)}"
            record = {
                "key": key,
                "path": path,
                "body": body,
                "headers": headers,
                "id": provider_id,
                "time": time.monotonic(),
            }
            self.deliveries.append(record)
            self._write({"event": "delivery", **record})
            return provider_id, True

    def record(
        self,
        key: str | None,
        path: str,
        status: int,
        arrived: float,
        *,
        delivered: bool = False,
        duplicate: bool = False,
        fault: str = "",
    ) -> None:
        """Log one provider request: what it was answered (0: no answer) and when it came."""
        entry = {
            "key": key,
            "path": path,
            "status": status,
            "delivered": delivered,
            "duplicate": duplicate,
            "fault": fault,
            "time": arrived,
        }
        with self.lock:
            self.requests.append(entry)
            self._write({"event": "request", **entry})

    def _write(self, entry: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.stop.set()
        with self.lock:
            if self._log is not None:
                self._log.close()
                self._log = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):  # in this thread, not the accept loop
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is the record."""

    def _reply(self, status: int, payload: Any, extra: Mapping[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        ]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        if self.close_connection:
            head.append("Connection: close")
        with contextlib.suppress(OSError):  # the client may have given up already
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def do_GET(self) -> None:
        state = self.server.state
        with state.lock:
            views = {
                "/_requests": list(state.requests),
                "/_deliveries": list(state.deliveries),
                "/_faults": state.faults.to_json(),
                "/_health": {"ok": True},
            }
        if self.path in views:
            self._reply(200, views[self.path])
        else:
            self._reply(404, {"error": f"no such endpoint {self.path}"})

    def do_POST(self) -> None:
        try:
            body = self._body()
        except ValueError:
            if not self.path.startswith("/_"):
                key = self.headers.get("Idempotency-Key")
                self.server.state.record(key, self.path, 400, time.monotonic())
            self._reply(400, {"error": "body is not JSON"})
            return
        if self.path.startswith("/_"):
            self._control(body)
        else:
            self._provider(body)

    def _control(self, body: Any) -> None:
        state = self.server.state
        try:
            if self.path == "/_faults":
                state.set_faults(Faults.parse(body))
            elif self.path == "/_reset":
                state.reset(Faults.parse(body))
            else:
                self._reply(404, {"error": f"no such endpoint {self.path}"})
                return
        except (TypeError, ValueError) as exc:
            self._reply(400, {"error": str(exc)})
            return
        self._reply(200, {"ok": True})

    def _provider(self, body: Any) -> None:
        """Decide, log (at once, with the arrival time), stall if the fault says so, answer."""
        state, arrived, path = self.server.state, time.monotonic(), self.path
        key = self.headers.get("Idempotency-Key")
        if not key:
            state.record(None, path, 400, arrived)
            self._reply(400, {"error": "missing Idempotency-Key header"})
            return
        step = state.next_fault(body.get("to") if isinstance(body, dict) else None)
        fault = ",".join(sorted(step))
        if "disconnect" in step:
            state.record(key, path, 0, arrived, fault=fault)
            self.close_connection = True
        elif "timeout" in step:
            state.record(key, path, 504, arrived, fault=fault)
            state.stop.wait(float(step["timeout"]))
            self._reply(504, {"error": "gateway timeout"})
        elif "status" in step:
            status = int(step["status"])
            extra = {"Retry-After": str(step["retry_after"])} if "retry_after" in step else {}
            state.record(key, path, status, arrived, fault=fault)
            self._reply(status, {"error": step.get("error", f"injected {status}")}, extra)
        else:
            state.stop.wait(float(step.get("slow", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            provider_id, delivered = state.deliver(key, path, body, headers)
            state.record(
                key, path, 200, arrived, delivered=delivered, duplicate=not delivered, fault=fault
            )
            state.stop.wait(float(step.get("accept_then_timeout", 0)))
            self._reply(200, {"id": provider_id, "status": "accepted"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, port: int, state: _State, tls: ssl.SSLContext | None) -> None:
        self.state = state
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that hang up or refuse the certificate; loud about bugs."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Wake every connection thread blocked on a kept-alive socket, so they end."""
        with self._open_lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _faults(faults: Faults | Mapping[str, Any] | None) -> Faults:
    return faults if isinstance(faults, Faults) else Faults.parse(faults)


class LoopbackGateway:
    """The gateway in a thread of this process. ``port=0`` lets the kernel pick a free one;
    ``tls`` (a server-side context, e.g. from ``trustme``) serves HTTPS instead."""

    def __init__(
        self,
        *,
        faults: Faults | Mapping[str, Any] | None = None,
        port: int = 0,
        log: Path | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._state = _State(_faults(faults), log)
        self._server = _Server(port, self._state, tls)
        self.port: int = self._server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        self._state.close()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.drop_connections()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def deliveries(self) -> list[dict[str, Any]]:
        with self._state.lock:
            return list(self._state.deliveries)

    def requests(self) -> list[dict[str, Any]]:
        with self._state.lock:
            return list(self._state.requests)

    def set_faults(self, faults: Faults | Mapping[str, Any] | None) -> None:
        """Replace the faults (``{}``: none)."""
        self._state.set_faults(_faults(faults))

    def reset(self, faults: Faults | Mapping[str, Any] | None = None) -> None:
        """Forget deliveries and requests, and set ``faults`` (default: none)."""
        self._state.reset(_faults(faults))


class GatewayProcess:
    """The gateway as its own process (``python -m tests.support.gateway``), driven over
    its control endpoints; same client API as ``LoopbackGateway``."""

    def __init__(
        self,
        *,
        faults: Mapping[str, Any] | None = None,
        port: int = 0,
        log: Path | None = None,
        ready_timeout: float = 10.0,
    ) -> None:
        self._argv = [sys.executable, "-m", "tests.support.gateway", "--port", str(port)]
        if log is not None:
            self._argv += ["--log", str(log)]
        if faults:
            self._argv += ["--faults", json.dumps(dict(faults))]
        self._ready_timeout = ready_timeout
        self._proc: subprocess.Popen[str] | None = None
        self._client: httpx.Client | None = None
        self.url = ""

    def start(self) -> Self:
        proc = self._proc = subprocess.Popen(
            self._argv, cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], self._ready_timeout)
        line = proc.stdout.readline().strip() if ready else ""
        if not line.startswith("listening "):
            self.close()
            raise RuntimeError(f"gateway did not start within {self._ready_timeout}s: {line!r}")
        self.url = line.removeprefix("listening ")
        self._client = httpx.Client(base_url=self.url, timeout=10)
        return self

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        if self._client is None:
            raise RuntimeError("gateway process is not running")
        response = self._client.request(method, path, json=payload)
        response.raise_for_status()
        return response.json()

    def deliveries(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_deliveries")
        return result

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/_requests")
        return result

    def set_faults(self, faults: Mapping[str, Any] | None) -> None:
        self._call("POST", "/_faults", dict(faults or {}))

    def reset(self, faults: Mapping[str, Any] | None = None) -> None:
        self._call("POST", "/_reset", dict(faults or {}))


def read_log(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(requests, deliveries) from a ``--log`` JSONL file, in the order they happened."""
    requests: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                entry = json.loads(line)
                (requests if entry.pop("event") == "request" else deliveries).append(entry)
    return requests, deliveries


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.gateway", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--port", type=int, default=0, help="0: pick a free port")
    parser.add_argument("--log", type=Path, help="append requests and deliveries (JSONL)")
    parser.add_argument("--faults", default="{}", help="faults as JSON, or @FILE")
    args = parser.parse_args(argv)
    text = Path(args.faults[1:]).read_text() if args.faults.startswith("@") else args.faults
    gateway = LoopbackGateway(faults=json.loads(text), port=args.port, log=args.log)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with gateway:
        print(f"listening {gateway.url}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
