"""The verifier's channels (issue 14): its gRPC port (the filter's API, ext_authz and RDS) serves
TLS only, with mTLS; the admin API has a TLS listener of its own and is not on `verifier.http`,
which keeps health, readiness and metrics in plaintext; the Envoy bootstrap names certificate
files and holds no key material; the admin listener does not wait on a body it will refuse."""

import http.client
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dev.stack import http_get  # noqa: E402

# An HTTP/2 client's first bytes: the connection preface and an empty SETTINGS frame.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SETTINGS = 0x04


def h2_settings_answer(sock) -> bool:
    """Sends the HTTP/2 preface on `sock`; true if the server answers with an HTTP/2 SETTINGS
    frame (a gRPC server speaking to us), false if it closes, fails or says anything else."""
    try:
        sock.sendall(H2_PREFACE)
        head = b""
        while len(head) < 9:
            chunk = sock.recv(9 - len(head))
            if not chunk:
                return False
            head += chunk
    except OSError:  # ssl.SSLError included: a TLS alert
        return False
    return head[3] == SETTINGS


def tls_socket(stack, port: int, client_cert: bool, alpn: list[str]):
    ctx = stack.pki.client_context(client_cert=client_cert, alpn=alpn)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def test_grpc_port_is_tls_only_with_mtls(stack):
    # Plaintext HTTP/2 (what a gRPC client without TLS sends): never answered as HTTP/2.
    with socket.create_connection(("127.0.0.1", stack.ports.grpc), timeout=5) as s:
        assert not h2_settings_answer(s)
    # TLS without a client certificate: refused (the handshake or the first read fails).
    try:
        with tls_socket(stack, stack.ports.grpc, client_cert=False, alpn=["h2"]) as s:
            assert not h2_settings_answer(s)
    except ssl.SSLError:
        pass
    # With the certificate Envoy presents: a gRPC server over TLS, HTTP/2 negotiated.
    with tls_socket(stack, stack.ports.grpc, client_cert=True, alpn=["h2"]) as s:
        assert s.selected_alpn_protocol() == "h2"
        assert h2_settings_answer(s)
    # And Envoy itself reaches the verifier that way: free, unpaid and paid-route answers work
    # (the route table came over RDS on that channel, the 402 needed no call, a Lightning 402
    # needed a Challenge call).
    assert http_get(f"{stack.url}/free")[0] == 200
    status, _ = http_get(f"{stack.url}/api/sats")
    assert status == 402


def test_admin_api_is_on_its_own_tls_listener_only(stack):
    token = {"authorization": f"Bearer {stack.admin_token}"}
    # Not on verifier.http, token or not.
    for path in ("/admin/routes", "/admin/routes/quote"):
        req = urllib.request.Request(stack.verifier_http + path, headers=token)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 404
    # verifier.http keeps health, readiness and metrics, in plaintext.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert http_get(stack.verifier_http + path)[0] == 200, path
    # On verifier.admin, over TLS with the client certificate.
    status, body = stack.admin("GET", "/admin/routes")
    assert status == 200, body
    assert any(r["name"] == "quote" for r in body["routes"])
    # That listener speaks no plaintext HTTP (a TLS alert is no HTTP answer)...
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, OSError)):
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{stack.ports.verifier_admin}/admin/routes", headers=token), timeout=5)
    # ... and serves no client without a certificate.
    ctx = stack.pki.client_context(client_cert=False)
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(
            urllib.request.Request(stack.verifier_admin_url + "/admin/routes", headers=token), timeout=5, context=ctx
        )


def test_admin_api_refuses_an_announced_huge_body_at_once(stack):
    with tls_socket(stack, stack.ports.verifier_admin, client_cert=True, alpn=["http/1.1"]) as s:
        started = time.monotonic()
        s.sendall(
            b"PUT /admin/routes/huge HTTP/1.1\r\nhost: localhost\r\n"
            + f"authorization: Bearer {stack.admin_token}\r\n".encode()
            + b"content-type: application/json\r\ncontent-length: 100000000\r\n\r\n"
        )
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        # 413 and the connection closed by the server, long before the 10 s read deadline.
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert time.monotonic() - started < 3


def test_bootstrap_and_config_dump_name_files_only(stack):
    bootstrap = (stack.run_dir / f"envoy-{stack.mode}.yaml").read_text()
    assert "envoy.transport_sockets.tls" in bootstrap
    assert str(stack.pki.ca) in bootstrap and str(stack.pki.client_key) in bootstrap
    status, dump = http_get(f"{stack.admin_url}/config_dump?include_eds", timeout=10)
    assert status == 200
    dump = dump.decode()
    for text, where in ((bootstrap, "bootstrap"), (dump, "config_dump")):
        assert "-----BEGIN" not in text and "PRIVATE KEY" not in text, where
        for pem in (stack.pki.key, stack.pki.client_key, stack.pki.ca, stack.pki.client_cert):
            body = pem.read_text().splitlines()[1]
            assert body not in text, f"{pem.name} content in the {where}"
