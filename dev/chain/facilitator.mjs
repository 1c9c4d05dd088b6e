#!/usr/bin/env node
// The official x402 facilitator (@x402/core + @x402/evm 2.27) served over plain node:http.
//
//   node facilitator.mjs [--host H] [--port N] [--rpc URL] [--network eip155:<chainId>]
//
// Endpoints: POST /verify, POST /settle  (body {x402Version, paymentPayload, paymentRequirements}),
//            GET /supported, GET /healthz.
// env: FACILITATOR_PRIVATE_KEY (default: anvil dev account #9) pays the gas of settlements;
//      FACILITATOR_TOKEN, if set, is required as `Authorization: Bearer <token>` on
//      /verify, /settle and /supported.

import { timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { parseArgs } from "node:util";

import { x402Facilitator } from "@x402/core/facilitator";
import { toFacilitatorEvmSigner } from "@x402/evm";
import { ExactEvmScheme } from "@x402/evm/exact/facilitator";
import { ExactEvmSchemeV1 } from "@x402/evm/exact/v1/facilitator";
import { EVM_NETWORK_CHAIN_ID_MAP } from "@x402/evm/v1";
import { createPublicClient, createWalletClient, http, publicActions } from "viem";

import { DEFAULT_RPC, accountFromKey, anvilDevKey, errorMessage, localChain, toJson, usage } from "./lib/common.mjs";

const USAGE = `usage: node facilitator.mjs [--host H] [--port N] [--rpc URL] [--network eip155:<chainId>]
  --host H        listen address (default 127.0.0.1)
  --port N        listen port (default 4020; 0 = any free port, printed on stderr)
  --rpc URL       JSON-RPC endpoint of the chain (default ${DEFAULT_RPC})
  --network NET   v2 CAIP-2 network to serve (default eip155:84532); the matching v1 name
                  (e.g. base-sepolia) is registered too when the chain id has one
env: FACILITATOR_PRIVATE_KEY (default: anvil dev account #9), FACILITATOR_TOKEN (optional bearer token)
`;

const MAX_BODY_BYTES = 1 << 20;

function log(msg) {
  process.stderr.write(`${new Date().toISOString()} facilitator: ${msg}\n`);
}

// ------------------------------------------------------------------------------------ options

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "4020" },
      rpc: { type: "string", default: DEFAULT_RPC },
      network: { type: "string", default: "eip155:84532" },
      help: { type: "boolean", short: "h" },
    },
  }));
} catch (err) {
  usage(USAGE, err.message);
}
if (opts.help) usage(USAGE);

const networkMatch = /^eip155:(\d+)$/.exec(opts.network);
if (!networkMatch) usage(USAGE, `--network must look like eip155:<chainId>, got ${opts.network}`);
const chainId = Number(networkMatch[1]);
const port = Number(opts.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) usage(USAGE, `bad --port ${opts.port}`);

const v1Network = Object.entries(EVM_NETWORK_CHAIN_ID_MAP).find(([, id]) => id === chainId)?.[0];
const bearerToken = process.env.FACILITATOR_TOKEN || "";

// --------------------------------------------------------------------------------- facilitator

let account;
try {
  account = accountFromKey(process.env.FACILITATOR_PRIVATE_KEY || anvilDevKey(9));
} catch (err) {
  usage(USAGE, `FACILITATOR_PRIVATE_KEY: ${err.message}`);
}
const chain = localChain(chainId, opts.rpc);
const client = createWalletClient({ account, chain, transport: http(opts.rpc) }).extend(publicActions);

// One sender, one nonce sequence: serialise transaction submission so that concurrent
// settlements never pick the same nonce (a failed submission consumes no nonce either).
let sendQueue = Promise.resolve();
function serialised(fn) {
  const run = sendQueue.then(fn, fn);
  sendQueue = run.catch(() => {});
  return run;
}

const signer = toFacilitatorEvmSigner({
  address: account.address,
  getCode: (args) => client.getCode(args),
  readContract: (args) => client.readContract(args),
  verifyTypedData: (args) => client.verifyTypedData(args),
  writeContract: (args) => serialised(() => client.writeContract(args)),
  sendTransaction: (args) => serialised(() => client.sendTransaction(args)),
  waitForTransactionReceipt: (args) => client.waitForTransactionReceipt(args),
});

const facilitator = new x402Facilitator();
facilitator.register(opts.network, new ExactEvmScheme(signer));
if (v1Network) facilitator.registerV1(v1Network, new ExactEvmSchemeV1(signer));

// -------------------------------------------------------------------------------------- http

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new HttpError(413, "request body too large"));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

async function readPaymentRequest(req) {
  const text = await readBody(req);
  let body;
  try {
    body = JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, `malformed JSON body: ${err.message}`);
  }
  if (!body || typeof body !== "object" || Array.isArray(body)) {
    throw new HttpError(400, "body must be a JSON object");
  }
  const { paymentPayload, paymentRequirements } = body;
  for (const [name, value] of Object.entries({ paymentPayload, paymentRequirements })) {
    if (!value || typeof value !== "object" || Array.isArray(value)) {
      throw new HttpError(400, `body.${name} must be a JSON object`);
    }
  }
  return { paymentPayload, paymentRequirements };
}

function authorised(req) {
  if (!bearerToken) return true;
  const match = /^Bearer\s+(.+)$/i.exec(req.headers.authorization || "");
  if (!match) return false;
  const given = Buffer.from(match[1].trim());
  const expected = Buffer.from(bearerToken);
  return given.length === expected.length && timingSafeEqual(given, expected);
}

function send(res, status, value, extraHeaders = {}) {
  const body = toJson(value);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
    "cache-control": "no-store",
    ...extraHeaders,
  });
  res.end(body);
}

/** Short summary of a result for the request log. */
function outcome(result) {
  if (!result || typeof result !== "object") return "";
  if ("isValid" in result) {
    return result.isValid ? `isValid payer=${result.payer}` : `invalid ${result.invalidReason ?? ""}`;
  }
  if ("success" in result) {
    return result.success
      ? `success tx=${result.transaction}`
      : `failed ${String(result.errorReason ?? "").slice(0, 160)}`;
  }
  if (result.error) return `error ${String(result.error).slice(0, 160)}`;
  return "";
}

async function route(req) {
  const path = new URL(req.url, "http://localhost").pathname.replace(/\/+$/, "") || "/";
  const method = req.method;

  if (path === "/healthz" && (method === "GET" || method === "HEAD")) {
    return [200, { status: "ok", network: opts.network, v1Network: v1Network ?? null, signer: account.address }];
  }
  const known = { "/verify": "POST", "/settle": "POST", "/supported": "GET" };
  if (!(path in known)) return [404, { error: `no route for ${method} ${path}` }];
  if (method !== known[path]) return [405, { error: `use ${known[path]} ${path}` }, { allow: known[path] }];
  if (!authorised(req)) return [401, { error: "missing or invalid bearer token" }, { "www-authenticate": "Bearer" }];

  if (path === "/supported") return [200, facilitator.getSupported()];
  const { paymentPayload, paymentRequirements } = await readPaymentRequest(req);
  if (path === "/verify") return [200, await facilitator.verify(paymentPayload, paymentRequirements)];
  return [200, await facilitator.settle(paymentPayload, paymentRequirements)];
}

const server = createServer(async (req, res) => {
  const started = Date.now();
  let status;
  let result;
  let headers;
  try {
    [status, result, headers] = await route(req);
  } catch (err) {
    status = err instanceof HttpError ? err.status : 500;
    result = { error: errorMessage(err) };
  }
  send(res, status, result, headers);
  log(`${req.method} ${req.url} -> ${status} ${Date.now() - started}ms ${outcome(result)}`.trimEnd());
});
server.keepAliveTimeout = 5000;

// ----------------------------------------------------------------------------------- startup

async function checkChain() {
  try {
    const rpcChainId = await createPublicClient({ transport: http(opts.rpc) }).getChainId();
    if (rpcChainId !== chainId) {
      log(`error: RPC ${opts.rpc} serves chain ${rpcChainId}, but --network is ${opts.network}`);
      process.exit(1);
    }
  } catch (err) {
    // Not fatal: the node may come up later; verify/settle will report RPC errors until then.
    log(`warning: RPC ${opts.rpc} not reachable yet (${errorMessage(err)})`);
  }
}

function shutdown(signal) {
  log(`${signal}: shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGTERM", () => shutdown("SIGTERM"));
process.on("SIGINT", () => shutdown("SIGINT"));

await checkChain();
server.on("error", (err) => {
  log(`error: ${err.message}`);
  process.exit(1);
});
server.listen(port, opts.host, () => {
  const { address, port: bound } = server.address();
  const host = address.includes(":") ? `[${address}]` : address;
  log(
    `listening on http://${host}:${bound} network=${opts.network}` +
      `${v1Network ? ` v1=${v1Network}` : ""} signer=${account.address} rpc=${opts.rpc}` +
      `${bearerToken ? " auth=bearer" : ""}`,
  );
});
