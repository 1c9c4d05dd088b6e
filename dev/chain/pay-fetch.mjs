#!/usr/bin/env node
// Pays an x402-protected URL with the official v2 client (@x402/fetch 2.27).
//
//   PAYER_PRIVATE_KEY=0x… node pay-fetch.mjs URL [--method M] [--body JSON] [--header 'Name: value']...
//
// Prints one JSON line: {"status":…, "headers":{…}, "body":"…", "receipt":{…}|null}, where receipt
// is the decoded PAYMENT-RESPONSE (or X-PAYMENT-RESPONSE) header. Exit 0 whenever an HTTP
// response arrived (any status), 2 with {"error":"…"} on an exception.
// The client accepts v2 (PAYMENT-REQUIRED header) and v1 (JSON body) 402s, on any eip155 chain
// and any asset: spend controls are off, since the local test token is not an SDK default asset.

import { registerExactEvmScheme } from "@x402/evm/exact/client";
import { wrapFetchWithPayment, x402Client } from "@x402/fetch";

import { accountFromKey } from "./lib/common.mjs";
import { runPayClient } from "./lib/payclient.mjs";

await runPayClient({
  name: "pay-fetch.mjs",
  makeFetch: async (key, _opts, baseFetch) => {
    const client = new x402Client();
    registerExactEvmScheme(client, { signer: accountFromKey(key) });
    client.setSpendControls(false);
    return wrapFetchWithPayment(baseFetch, client);
  },
});
