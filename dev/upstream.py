"""Demo upstream API that Tollway protects.

Counts every request it serves (per path) so tests can prove a refused request never reached it:
`GET /__hits` answers the counters as JSON, and `GET /__seen?path=/api/quote` the headers of the
last request served on that path (lower-case names, plus `:method` and `:path`, the raw request
target with its query, so tests can prove payment and lease credentials were stripped). Tests
call them on the upstream's own port; they are dev-only helpers (Envoy passes paths no route
names, so through the demo gateway they answer too).

Streams and WebSockets (sold as leases, see docs/leases.md):
- `GET /v1/ticker/<symbol>`: server-sent events. The first event is sent and flushed at once; the
  second only when the symbol's gate opens (`POST /__release?symbol=<symbol>` on the upstream's
  port, answering how many streams it released) or after `--gate-timeout` seconds. So a client
  that reads event 1 before releasing proves nothing between it and the upstream buffers.
- `GET /v1/ws/<room>`: a WebSocket echo server (RFC 6455, by hand on the stdlib server): text and
  binary messages come back as they were sent, pings get pongs, a close is answered and ends it.
- `GET /v1/headers`: answers the request headers it received (for the header-policy tests).

Slow answers (for the fault-injection tests, which need a paid request held between the
verifier's Verify and Settle): `GET /api/slow?ms=N` answers after N milliseconds;
`GET /api/slow?gate=NAME` answers when the gate NAME opens (`POST /__release?symbol=NAME`, the
ticker's gates, so `__release` answers how many requests it let go) or after `--gate-timeout`
seconds (`"released": false` in the body). The hit is counted when the request arrives, so a
test that sees it knows the payment was verified and the upstream is now busy.
"""

import argparse
import base64
import hashlib
import json
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HITS: dict[str, int] = {}
SEEN: dict[str, dict[str, str]] = {}
LOCK = threading.Lock()

# Stream gates: RELEASED[symbol] counts releases; a stream waits for the count to move past the
# value it saw when it started. WAITING[symbol] is the number of streams waiting right now.
GATE = threading.Condition()
RELEASED: dict[str, int] = {}
WAITING: dict[str, int] = {}
GATE_TIMEOUT = 10.0  # below Envoy's default 15 s route timeout

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_MAX_MESSAGE = 1 << 20
WS_IDLE_TIMEOUT = 120.0
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def unmask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: tests read results, not logs
        pass

    def _send(self, status: int, payload, content_type="application/json"):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def _count(self, path: str):
        with LOCK:
            HITS[path] = HITS.get(path, 0) + 1
            SEEN[path] = {**self._headers(), ":method": self.command, ":path": self.path}

    def _query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/__hits":
            with LOCK:
                return self._send(200, dict(HITS))
        if path == "/__seen":
            wanted = self._query().get("path", [""])[0]
            with LOCK:
                return self._send(200, SEEN.get(wanted, {}))
        if path == "/__release":
            return self._release()
        self._count(path)
        if path == "/free":
            return self._send(200, {"free": True, "message": "no payment needed"})
        if path == "/api/quote":
            return self._send(200, {"symbol": "TOLL", "price": "42.00", "at": int(time.time())})
        if path == "/api/sats":
            return self._send(200, {"paid_in": "sats", "message": "thanks for the sats", "headers": self._headers()})
        if path == "/api/once":
            return self._send(200, {"single_use": True, "message": "one request per token", "at": time.time()})
        if path == "/api/fail":
            return self._send(500, {"error": "upstream failure"})
        if path == "/v1/headers":
            return self._send(200, {"path": self.path, "headers": self._headers()})
        if path in ("/api/slow", "/api/slow-withheld"):
            return self._slow()
        parts = path.split("/")
        if len(parts) == 4 and parts[:3] == ["", "v1", "ticker"] and parts[3]:
            return self._ticker(parts[3])
        if len(parts) == 4 and parts[:3] == ["", "v1", "ws"] and parts[3]:
            return self._websocket(parts[3])
        return self._send(404, {"error": "not found", "path": path})

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        if path == "/__release":
            return self._release()
        self._count(path)
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if path == "/api/echo":
            return self._send(
                200,
                {
                    "method": "POST",
                    "path": self.path,
                    "headers": self._headers(),
                    "body": body.decode("utf-8", "replace"),
                },
            )
        if path == "/api/fail":
            return self._send(500, {"error": "upstream failure"})
        return self._send(404, {"error": "not found", "path": path})

    # -- slow answers ----------------------------------------------------------------------
    def _slow(self):
        query = self._query()
        started = time.monotonic()
        released = True
        gate = query.get("gate", [""])[0]
        if gate:
            with GATE:
                start = RELEASED.get(gate, 0)
                WAITING[gate] = WAITING.get(gate, 0) + 1
                try:
                    released = GATE.wait_for(lambda: RELEASED.get(gate, 0) > start, timeout=GATE_TIMEOUT)
                finally:
                    WAITING[gate] -= 1
        else:
            try:
                ms = float(query.get("ms", ["0"])[0])
            except ValueError:
                return self._send(400, {"error": "ms must be a number"})
            time.sleep(max(0.0, min(ms, GATE_TIMEOUT * 1000)) / 1000)
        waited_ms = round((time.monotonic() - started) * 1000)
        try:
            self._send(200, {"slow": True, "gate": gate or None, "released": released, "waited_ms": waited_ms})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- server-sent events ----------------------------------------------------------------
    def _release(self):
        symbol = self._query().get("symbol", [""])[0]
        if not symbol:
            return self._send(400, {"error": "symbol query parameter required"})
        with GATE:
            RELEASED[symbol] = RELEASED.get(symbol, 0) + 1
            waiting = WAITING.get(symbol, 0)
            GATE.notify_all()
        return self._send(200, {"symbol": symbol, "released": waiting})

    def _chunk(self, data: bytes):
        """One HTTP/1.1 chunk, written straight to the socket (`wfile` is unbuffered)."""
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _ticker(self, symbol: str):
        def event(seq: int) -> bytes:
            data = json.dumps({"symbol": symbol, "seq": seq, "at": time.time()})
            return f"id: {seq}\nevent: tick\ndata: {data}\n\n".encode()

        with GATE:
            start = RELEASED.get(symbol, 0)
            WAITING[symbol] = WAITING.get(symbol, 0) + 1
        waiting = True
        try:
            # No content-length and no cache-control: the route's `streaming` preset adds the
            # latter, and the tests check that it did.
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            self._chunk(event(1))
            with GATE:
                released = GATE.wait_for(lambda: RELEASED.get(symbol, 0) > start, timeout=GATE_TIMEOUT)
                WAITING[symbol] -= 1
                waiting = False
            self._chunk(event(2) + (b"" if released else b": gate timed out\n\n"))
            self._chunk(b"")  # last chunk
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            if waiting:  # left before the gate (client gone)
                with GATE:
                    WAITING[symbol] -= 1

    # -- WebSocket echo (RFC 6455) ---------------------------------------------------------
    def _websocket(self, room: str):
        key = self.headers.get("sec-websocket-key", "")
        upgrade = self.headers.get("upgrade", "").lower()
        connection = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if upgrade != "websocket" or "upgrade" not in connection or not key:
            return self._send(426, {"error": "websocket upgrade required", "room": room})
        if self.headers.get("sec-websocket-version") != "13":
            self.send_response(426)
            self.send_header("sec-websocket-version", "13")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        accept = base64.b64encode(hashlib.sha1(key.strip().encode() + WS_GUID).digest()).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("upgrade", "websocket")
        self.send_header("connection", "Upgrade")
        self.send_header("sec-websocket-accept", accept)
        self.end_headers()
        self.close_connection = True  # the connection is the WebSocket's from now on
        self.connection.settimeout(WS_IDLE_TIMEOUT)
        try:
            self._ws_session()
        except (EOFError, BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            pass

    def _read(self, n: int) -> bytes:
        data = self.rfile.read(n) if n else b""
        if len(data) < n:
            raise EOFError
        return data

    def _ws_send(self, opcode: int, payload: bytes = b""):
        """One unmasked, final frame (a server never masks)."""
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        self.wfile.write(head + payload)

    def _ws_close(self, code: int):
        self._ws_send(OP_CLOSE, struct.pack("!H", code))

    def _ws_session(self):
        message_op, parts = None, []  # a fragmented message being assembled
        while True:
            b1, b2 = self._read(2)
            fin, rsv, opcode = b1 & 0x80, b1 & 0x70, b1 & 0x0F
            masked, n = b2 & 0x80, b2 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            if rsv or not masked:  # no extension was negotiated; clients must mask
                return self._ws_close(1002)
            if n > WS_MAX_MESSAGE:
                return self._ws_close(1009)
            mask = self._read(4)
            data = unmask(self._read(n), mask)

            if opcode >= 0x8:  # control frames: never fragmented, at most 125 bytes
                if not fin or n > 125:
                    return self._ws_close(1002)
                if opcode == OP_CLOSE:
                    # Answer with the peer's status code (none if it sent none), then hang up.
                    return self._ws_send(OP_CLOSE, data[:2])
                if opcode == OP_PING:
                    self._ws_send(OP_PONG, data)
                elif opcode != OP_PONG:
                    return self._ws_close(1002)
                continue

            if opcode == OP_CONT:
                if message_op is None:
                    return self._ws_close(1002)
            elif opcode in (OP_TEXT, OP_BINARY):
                if message_op is not None:
                    return self._ws_close(1002)
                message_op = opcode
            else:
                return self._ws_close(1002)
            parts.append(data)
            if sum(map(len, parts)) > WS_MAX_MESSAGE:
                return self._ws_close(1009)
            if not fin:
                continue
            message = b"".join(parts)
            op, message_op, parts = message_op, None, []
            if op == OP_TEXT:
                try:
                    message.decode("utf-8")
                except UnicodeDecodeError:
                    return self._ws_close(1007)
            self._ws_send(op, message)


def main():
    global GATE_TIMEOUT
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18080)
    p.add_argument("--gate-timeout", type=float, default=GATE_TIMEOUT, help="seconds a stream waits for its release")
    a = p.parse_args()
    GATE_TIMEOUT = a.gate_timeout
    server = ThreadingHTTPServer((a.host, a.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
