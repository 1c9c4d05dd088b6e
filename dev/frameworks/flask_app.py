"""A Flask upstream (Werkzeug's threaded development server) for the bypass regression suite
(tests/test_bypass.py).

It serves the paid routes of dev/stack.py's ROUTES (the upstream paths of the rewritten ones) with
Flask's own routing and default settings, and answers each with a fixed marker (an
`x-paid-content` header and `{"paid_content": "<route>"}`), so a test can tell whether a request
reached paid content.

    python dev/frameworks/flask_app.py [--port N]      (default: $PORT, else 18080)
"""

import argparse
import os

from flask import Flask, jsonify

app = Flask(__name__)


def paid(name: str):
    response = jsonify(paid_content=name)
    response.headers["x-paid-content"] = name
    return response


@app.get("/free")
def free():
    return jsonify(free=True)


@app.get("/api/quote")
def quote():
    return paid("quote")


@app.post("/api/echo")
def echo():
    return paid("echo")


@app.route("/api/fail", methods=["GET", "POST"])
def fail():
    return paid("fail")


@app.get("/api/sats")
def sats():
    return paid("sats")


@app.get("/api/once")
def once():
    return paid("once")


@app.get("/v1/headers")  # route `headers`: /api/headers rewritten
def headers():
    return paid("headers")


@app.get("/v1/ticker/<symbol>")  # routes ticker, ticker-once, flash
def ticker(symbol):
    return paid("ticker")


@app.get("/v1/ws/<room>")  # routes chat, short
def chat(room):
    return paid("chat")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "18080")))
    a = p.parse_args()
    app.run(host=a.host, port=a.port, threaded=True, debug=False, use_reloader=False)


if __name__ == "__main__":
    main()
