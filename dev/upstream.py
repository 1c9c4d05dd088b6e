"""Demo upstream API that Tollway protects.

Counts every request it serves (per path) so tests can prove a refused request never reached it:
`GET /__hits` answers the counters as JSON, and `GET /__seen?path=/api/quote` the headers of the
last request served on that path (so tests can prove payment credentials were stripped). Both are
only reachable directly, never through Envoy (the demo config does not route them, and tests call
the upstream's port).
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HITS: dict[str, int] = {}
SEEN: dict[str, dict[str, str]] = {}
LOCK = threading.Lock()


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
            SEEN[path] = self._headers()

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/__hits":
            with LOCK:
                return self._send(200, dict(HITS))
        if path == "/__seen":
            wanted = parse_qs(urlsplit(self.path).query).get("path", [""])[0]
            with LOCK:
                return self._send(200, SEEN.get(wanted, {}))
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
        return self._send(404, {"error": "not found", "path": path})

    def do_POST(self):
        path = self.path.split("?", 1)[0]
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


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18080)
    a = p.parse_args()
    server = ThreadingHTTPServer((a.host, a.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
