// The benchmark's peer: the reference `@x402/express` middleware (x402 Foundation, pinned in
// package.json) in front of the same static upstream Tollway proxies to, with the same instant
// facilitator double. One paid route, same price/network/asset/payTo as Tollway's bench route;
// its handler fetches the upstream and returns its body.
//
//   node server.mjs --port P --upstream http://127.0.0.1:U --facilitator http://127.0.0.1:F \
//     --asset 0x.. --pay-to 0x.. --amount 1000 [--network eip155:84532] [--path /api/quote]
//     [--max-timeout 300] [--name USDC] [--version 2]

import express from "express";
import { paymentMiddleware, x402ResourceServer } from "@x402/express";
import { HTTPFacilitatorClient } from "@x402/core/server";
import { ExactEvmScheme } from "@x402/evm/exact/server";

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith("--") || argv[i + 1] === undefined) {
      console.error(`bad argument ${argv[i]}`);
      process.exit(2);
    }
    out[argv[i].slice(2)] = argv[i + 1];
  }
  for (const required of ["port", "upstream", "facilitator", "asset", "pay-to", "amount"]) {
    if (!out[required]) {
      console.error(`--${required} is required`);
      process.exit(2);
    }
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const network = args.network ?? "eip155:84532";
const path = args.path ?? "/api/quote";

const facilitator = new HTTPFacilitatorClient({ url: args.facilitator });
const resourceServer = new x402ResourceServer(facilitator).register(network, new ExactEvmScheme());

const routes = {
  [`GET ${path}`]: {
    accepts: {
      scheme: "exact",
      network,
      payTo: args["pay-to"],
      // An explicit AssetAmount, so the requirement is byte-for-byte Tollway's rail.
      price: {
        amount: args.amount,
        asset: args.asset,
        extra: { name: args.name ?? "USDC", version: args.version ?? "2" },
      },
      maxTimeoutSeconds: Number(args["max-timeout"] ?? 300),
    },
    description: "Bench quote",
    mimeType: "application/json",
  },
};

const app = express();
app.disable("x-powered-by");
app.disable("etag");
app.use(paymentMiddleware(routes, resourceServer));

app.get(path, async (_req, res, next) => {
  try {
    const upstream = await fetch(`${args.upstream}${path}`);
    const body = Buffer.from(await upstream.arrayBuffer());
    res.status(upstream.status).type(upstream.headers.get("content-type") ?? "application/json").send(body);
  } catch (e) {
    next(e);
  }
});

app.get("/healthz", (_req, res) => {
  res.type("text/plain").send("ok");
});

const server = app.listen(Number(args.port), "127.0.0.1", () => {
  console.error(`peer (@x402/express) listening on http://127.0.0.1:${args.port}${path}`);
});
// wrk keeps connections open; Node's default 5 s keep-alive timeout would close idle ones.
server.keepAliveTimeout = 65_000;
server.headersTimeout = 66_000;
