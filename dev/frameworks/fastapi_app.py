"""A FastAPI upstream (served by uvicorn) for the bypass regression suite (tests/test_bypass.py).

It serves the paid routes of dev/stack.py's ROUTES (the upstream paths of the rewritten ones) with
FastAPI's own routing and default settings, and answers each with a fixed marker (an
`x-paid-content` header and `{"paid_content": "<route>"}`), so a test can tell whether a request
reached paid content.

    python dev/frameworks/fastapi_app.py [--port N]      (default: $PORT, else 18080)
"""

import argparse
import os

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI()


def paid(name: str) -> JSONResponse:
    return JSONResponse({"paid_content": name}, headers={"x-paid-content": name})


@app.get("/free")
def free():
    return {"free": True}


@app.get("/api/quote")
def quote():
    return paid("quote")


@app.post("/api/echo")
def echo():
    return paid("echo")


@app.api_route("/api/fail", methods=["GET", "POST"])
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


@app.get("/v1/ticker/{symbol}")  # routes ticker, ticker-once, flash
def ticker(symbol: str):
    return paid("ticker")


@app.get("/v1/ws/{room}")  # routes chat, short
def chat(room: str):
    return paid("chat")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "18080")))
    a = p.parse_args()
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
