"""A misbehaving S3 endpoint for tests: an HTTP proxy on 127.0.0.1 in front of the moto
server that answers some requests itself (503 SlowDown, 500 InternalError, 403 AccessDenied,
a reset connection) and forwards the others unchanged. What reaches the job is what a real
S3 endpoint sends on a bad night; nothing in the job is faked.

A rule matches requests by a substring of their path (and optionally the method) and acts
on the first `times` of them (None: on all of them) after letting `after` of them pass;
with `alternate`, on every other
request for the same object and byte range, so each request fails once and its retry
passes, wherever it comes from (the driver's planning, a Ray read task, a writer)."""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>{code}</Code><Message>{message}</Message><RequestId>proxy</RequestId></Error>"
)
ANSWERS = {  # action -> (HTTP status, S3 error code, message)
    "slow_down": (503, "SlowDown", "Please reduce your request rate."),
    "internal_error": (500, "InternalError", "We encountered an internal error. Please try again."),
    "access_denied": (403, "AccessDenied", "Access Denied"),
}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass
class Rule:
    path_contains: str
    action: str  # a key of ANSWERS, "reset" (close the connection with an RST, no answer), or "delay"
    times: int | None = None
    method: str | None = None
    alternate: bool = False
    after: int = 0
    passed: int = 0
    hits: int = 0
    seen: dict = field(default_factory=dict)  # (method, path, range) -> requests so far
    delay_s: float = 0.5  # "delay": a slow store, the request is answered this much later

    def take(self, method: str, path: str, byte_range: str | None) -> bool:
        if self.path_contains not in path or (self.method and self.method != method):
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        if self.passed < self.after:
            self.passed += 1
            return False
        if self.alternate:
            key = (method, path, byte_range)
            self.seen[key] = self.seen.get(key, 0) + 1
            if self.seen[key] % 2 == 0:
                return False
        self.hits += 1
        return True


class S3Proxy:
    """`with S3Proxy(moto_endpoint) as proxy:` then point AWS_ENDPOINT_URL at `proxy.endpoint`."""

    def __init__(self, upstream: str):
        self.upstream = urlparse(upstream)
        self.rules: list[Rule] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status answered); -1: reset
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, rule: Rule) -> Rule:
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def answered(self, status: int) -> list[tuple[str, str]]:
        return [(method, path) for method, path, code in self.requests if code == status]

    def rule_for(self, method: str, path: str, byte_range: str | None) -> Rule | None:
        with self.lock:
            return next((rule for rule in self.rules if rule.take(method, path, byte_range)), None)

    def __enter__(self) -> "S3Proxy":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(proxy: S3Proxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _any(self) -> None:
            body = self._body()
            rule = proxy.rule_for(self.command, self.path, self.headers.get("Range"))
            if rule is not None and rule.action == "reset":
                proxy.requests.append((self.command, self.path, -1))
                # SO_LINGER 0: close() sends RST, as a dropped connection does
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return
            if rule is not None and rule.action == "delay":
                time.sleep(rule.delay_s)
                rule = None
            if rule is not None:
                status, code, message = ANSWERS[rule.action]
                body = ERROR_XML.format(code=code, message=message).encode()
                self._answer(status, {"Content-Type": "application/xml"}, body)
                return
            self._forward(body)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _forward(self, body: bytes) -> None:
            upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                out = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP | {"content-length"}}
                self._answer(response.status, out, data, head_length=response.getheader("Content-Length"))
            finally:
                upstream.close()

        def _answer(self, status: int, headers: dict, data: bytes, head_length: str | None = None) -> None:
            proxy.requests.append((self.command, self.path, status))
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            # a HEAD answer carries the object's length but no body
            length = head_length if self.command == "HEAD" and head_length is not None else str(len(data))
            self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    return Handler
