"""A paid service built with Coinbase's Python x402 SDK (its FastAPI middleware), for Paygent's tests and
benchmarks: a second implementation of the service side, settled by the reference facilitator that
x402-peer.mjs runs.

Input, as JSON in PEER_CONFIG: {facilitator, chainId, asset, name, version, payTo}.
Output: one JSON line on stdout, {service}, once it listens on 127.0.0.1.
"""

import json
import os
import socket

import uvicorn
from fastapi import FastAPI, Request
from x402 import x402ResourceServer
from x402.http import FacilitatorConfig, HTTPFacilitatorClient
from x402.http.middleware.fastapi import payment_middleware
from x402.http.types import PaymentOption, RouteConfig
from x402.mechanisms.evm.exact import ExactEvmServerScheme

cfg = json.loads(os.environ["PEER_CONFIG"])
network = f"eip155:{cfg['chainId']}"

server = x402ResourceServer(HTTPFacilitatorClient(FacilitatorConfig(url=cfg["facilitator"])))
server.register(network, ExactEvmServerScheme())


def paid(units: int) -> RouteConfig:
    """A route priced in the test token's smallest units, with its EIP-712 domain stated."""
    price = {"amount": str(units), "asset": cfg["asset"], "extra": {"name": cfg["name"], "version": cfg["version"]}}
    option = PaymentOption(scheme="exact", pay_to=cfg["payTo"], price=price, network=network, max_timeout_seconds=120)
    return RouteConfig(accepts=option, description=f"data for {units} units")


app = FastAPI()
gate = payment_middleware({"GET /py/cheap": paid(100_000), "GET /py/premium": paid(25_000_000)}, server)
served: dict[str, int] = {}


@app.middleware("http")
async def x402(request: Request, call_next):
    return await gate(request, call_next)


def body(route: str) -> dict:
    served[route] = served.get(route, 0) + 1
    return {"data": f"the {route} resource", "served": served[route]}


@app.get("/py/cheap")
async def cheap() -> dict:
    return body("py/cheap")


@app.get("/py/premium")
async def premium() -> dict:
    return body("py/premium")


@app.get("/served")
async def count() -> dict:
    return served


listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
# Accepted connections inherit it: without it a reused connection waits out delayed ACKs (about 40 ms) between
# the response's header and body writes, which no deployment behind a proxy would see.
listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(256)
print(json.dumps({"service": f"http://127.0.0.1:{listener.getsockname()[1]}"}), flush=True)
uvicorn.run(app, fd=listener.fileno(), log_level="warning", access_log=False)
