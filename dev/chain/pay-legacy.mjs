#!/usr/bin/env node
// Pays an x402-protected URL with the legacy v1 client (x402-fetch 1.2, X-PAYMENT header).
//
//   PAYER_PRIVATE_KEY=0x… node pay-legacy.mjs URL [--method M] [--body JSON] [--header 'Name: value']...
//                                             [--network base-sepolia] [--max-value ATOMIC]
//
// Same output as pay-fetch.mjs. The legacy client reads only the v1 JSON body of the 402, picks
// the `accepts` entry for its signer's network and refuses amounts above --max-value.

import { createSigner, wrapFetchWithPayment } from "x402-fetch";

import { runPayClient } from "./lib/payclient.mjs";

await runPayClient({
  name: "pay-legacy.mjs",
  extraOptions: {
    network: { type: "string", default: "base-sepolia" },
    "max-value": { type: "string", default: "10000000" },
  },
  extraUsage: `  --network NAME           v1 network of the signer (default base-sepolia)
  --max-value ATOMIC       largest amount the client will pay (default 10000000 = 10 tokens)
`,
  makeFetch: async (key, opts, baseFetch) => {
    const signer = await createSigner(opts.network, key);
    return wrapFetchWithPayment(baseFetch, signer, BigInt(opts["max-value"]));
  },
});
