#!/usr/bin/env node
// Pays a Lightning-priced URL with @getalby/lightning-tools 9.0.1: `fetchWithL402` (the default:
// WWW-Authenticate L402/LSAT challenge, `Authorization: <scheme> <macaroon>:<preimage>`) or, with
// --x402, `fetchWithX402` (the x402 `accepts` entry with `extra.paymentMethod: "lightning"`, paid
// then proven with a v2 PAYMENT-SIGNATURE carrying the invoice).
//
//   LN_PAY_URL=http://127.0.0.1:9090/dev/lightning/pay node pay-l402-alby.mjs URL [--x402]
//       [--method M] [--body JSON] [--header 'Name: value']...
//
// The wallet handed to the library pays through the Tollway verifier's dev node: it POSTs the
// invoice to the dev-only pay endpoint and returns its preimage.
// Prints one JSON line: {"status", "headers", "body", "receipt", "payment"} where receipt is the
// decoded PAYMENT-RESPONSE (null when absent) and payment is what the library reports
// ({paid, amountSat, preimage, credentials}). Exit 0 whenever an HTTP response arrived, 2 with
// {"error": …} on an exception.

import { parseArgs } from "node:util";

import { fetchWithL402 } from "@getalby/lightning-tools/402/l402";
import { fetchWithX402 } from "@getalby/lightning-tools/402/x402";

import { errorMessage, usage } from "./lib/common.mjs";
import { decodeReceipt } from "./lib/payclient.mjs";

const TEXT = `usage: node pay-l402-alby.mjs URL [--x402] [--method M] [--body JSON] [--header 'Name: value']...
  --x402                   pay the x402 Lightning offer (PAYMENT-REQUIRED) instead of L402
  --method M               HTTP method (default GET, or POST when --body is given)
  --body JSON              request body (content-type application/json unless a --header sets one)
  --header 'Name: value'   extra request header; repeatable
env: LN_PAY_URL (or DEMO_LN_PAY_URL): the verifier's POST /dev/lightning/pay endpoint
prints one JSON line {"status","headers","body","receipt","payment"}; exit 0 if a response arrived, 2 on error
`;

/** A lightning-tools wallet backed by the verifier's dev node. */
function devNodeWallet(payUrl) {
  return {
    async payInvoice({ invoice }) {
      const res = await fetch(payUrl, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ invoice }),
      });
      const text = await res.text();
      if (!res.ok) throw new Error(`dev pay endpoint answered ${res.status}: ${text}`);
      const { preimage } = JSON.parse(text);
      return { preimage };
    },
  };
}

function finish(out, code) {
  process.stdout.write(`${JSON.stringify(out)}\n`, () => process.exit(code));
}

let values;
let positionals;
try {
  ({ values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      x402: { type: "boolean", default: false },
      method: { type: "string" },
      body: { type: "string" },
      header: { type: "string", multiple: true, default: [] },
      help: { type: "boolean", short: "h" },
    },
  }));
} catch (err) {
  usage(TEXT, err.message);
}
if (values.help) usage(TEXT);
if (positionals.length !== 1) usage(TEXT, "exactly one URL is required");
const payUrl = process.env.LN_PAY_URL || process.env.DEMO_LN_PAY_URL;
if (!payUrl) usage(TEXT, "set LN_PAY_URL (or source .demo/env for DEMO_LN_PAY_URL)");

try {
  const url = new URL(positionals[0]).toString();
  const headers = {};
  for (const h of values.header) {
    const i = h.indexOf(":");
    if (i <= 0) throw new Error(`--header must look like 'Name: value', got ${JSON.stringify(h)}`);
    headers[h.slice(0, i).trim()] = h.slice(i + 1).trim();
  }
  const init = { method: (values.method || (values.body !== undefined ? "POST" : "GET")).toUpperCase(), headers };
  if (values.body !== undefined) {
    init.body = values.body;
    if (!Object.keys(headers).some((k) => k.toLowerCase() === "content-type")) {
      headers["content-type"] = "application/json";
    }
  }
  const pay = values.x402 ? fetchWithX402 : fetchWithL402;
  const res = await pay(url, init, { wallet: devNodeWallet(payUrl) });
  const responseHeaders = {};
  for (const [k, v] of res.headers) responseHeaders[k.toLowerCase()] = v;
  const body = await res.text();
  finish({ status: res.status, headers: responseHeaders, body, receipt: decodeReceipt(res.headers), payment: res.payment ?? null }, 0);
} catch (err) {
  finish({ error: errorMessage(err) }, 2);
}
