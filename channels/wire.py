"""``StdlibTransport``: an ``httpx`` transport on the standard library's ``http.client``, one
kept-alive connection per thread and provider host.

Why: a provider API is one small JSON POST per message, and the CPU a send costs is what
bounds a dispatching process. ``httpx.HTTPTransport`` (httpcore and h11, in pure Python,
with a connection pool shared by all threads under one lock) costs about three times the
CPU of ``http.client`` for the same request on loopback (docs/performance.md), and its pool
lock is where the dispatcher's worker threads queue. This transport keeps httpx's request
and response types, timeouts and exception tree, so ``HttpChannel`` reads the same either
way and tests can still hand it ``httpx.MockTransport``.

What it promises: one request on the wire per ``handle_request`` (it never retries); a
connection the server closed while idle is noticed before reuse and replaced; a response is
read whole before it is returned. Errors are httpx's: ``ConnectTimeout``/``ReadTimeout``
when the server is too slow, ``ConnectError`` when nothing answers, ``ReadError`` or
``RemoteProtocolError`` when a connection breaks mid-request. TLS is verified against
``verify`` (an SSL context, or ``True`` for certifi's public CAs, as httpx does). Proxies
are not handled here: ``HttpChannel`` uses ``httpx.HTTPTransport`` when one is configured.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading

import certifi
import httpx

__all__ = ["StdlibTransport"]

_Key = tuple[str, str, int]


class StdlibTransport(httpx.BaseTransport):
    """See the module docstring. ``close()`` closes every thread's connections."""

    def __init__(self, verify: ssl.SSLContext | bool = True) -> None:
        if verify is True:
            verify = ssl.create_default_context(cafile=certifi.where())
        elif verify is False:
            verify = ssl._create_unverified_context()
        self._context = verify
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._all_lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        conn = self._connection(request.url, timeouts.get("read") or timeouts.get("connect"))
        if conn.sock is None:
            try:
                conn.connect()
            except TimeoutError as exc:
                conn.close()
                raise httpx.ConnectTimeout(str(exc) or "timed out", request=request) from exc
            except OSError as exc:
                conn.close()
                raise httpx.ConnectError(str(exc), request=request) from exc
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.raw}
        try:
            conn.request(
                request.method, request.url.raw_path.decode("ascii"), body=request.read(),
                headers=headers,
            )  # fmt: skip
            response = conn.getresponse()
            content = response.read()
        except TimeoutError as exc:
            conn.close()
            raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc
        except http.client.HTTPException as exc:
            conn.close()
            raise httpx.RemoteProtocolError(
                str(exc) or type(exc).__name__, request=request
            ) from exc
        except OSError as exc:
            conn.close()
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
        if response.will_close:
            conn.close()
        return httpx.Response(
            response.status, headers=response.getheaders(), content=content, request=request
        )

    def _connection(self, url: httpx.URL, timeout: float | None) -> http.client.HTTPConnection:
        """This thread's connection to ``url``'s host, fresh if the old one was closed."""
        mine: dict[_Key, http.client.HTTPConnection] | None = getattr(self._local, "conns", None)
        if mine is None:
            mine = self._local.conns = {}
        https = url.scheme == "https"
        key = (url.scheme, url.host, url.port or (443 if https else 80))
        conn = mine.get(key)
        if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
            conn.close()
        if conn is None:
            if https:
                conn = http.client.HTTPSConnection(
                    key[1], key[2], timeout=timeout, context=self._context
                )
            else:
                conn = http.client.HTTPConnection(key[1], key[2], timeout=timeout)
            mine[key] = conn
            with self._all_lock:
                self._all.append(conn)
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def close(self) -> None:
        with self._all_lock:
            opened, self._all = self._all, []
        for conn in opened:
            conn.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    """An idle kept-alive socket that is readable has been closed (or spoken on) by the
    server: it cannot carry another request."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
