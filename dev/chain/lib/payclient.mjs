// Common CLI for pay-fetch.mjs and pay-legacy.mjs: parse options, make one paying request,
// print one JSON line {status, headers, body, receipt}.

import { parseArgs } from "node:util";

import { anvilDevKey, errorMessage, usage } from "./common.mjs";

/** Decodes a PAYMENT-RESPONSE / X-PAYMENT-RESPONSE header (base64 of JSON); null if absent/bad. */
export function decodeReceipt(headers) {
  const raw = headers.get("payment-response") ?? headers.get("x-payment-response");
  if (!raw) return null;
  try {
    return JSON.parse(Buffer.from(raw.trim(), "base64").toString("utf8"));
  } catch {
    return null;
  }
}

function fail(err, lastStatus) {
  const out = { error: errorMessage(err) };
  if (lastStatus !== undefined) out.lastStatus = lastStatus; // status of the last response seen
  process.stdout.write(`${JSON.stringify(out)}\n`, () => process.exit(2));
}

/**
 * @param {object} p
 * @param {string} p.name       script name for the usage text
 * @param {object} p.extraOptions  additional parseArgs options
 * @param {string} p.extraUsage    usage lines for them
 * @param {(key: string, opts: object, baseFetch: typeof fetch) => Promise<typeof fetch>} p.makeFetch
 *        builds the paying fetch on top of baseFetch
 */
export async function runPayClient({ name, extraOptions = {}, extraUsage = "", makeFetch }) {
  const text = `usage: node ${name} URL [--method M] [--body JSON] [--header 'Name: value']...
  --method M               HTTP method (default GET, or POST when --body is given)
  --body JSON              request body, sent as is (content-type application/json unless a
                           --header sets one)
  --header 'Name: value'   extra request header; repeatable
${extraUsage}env: PAYER_PRIVATE_KEY (default: anvil dev account #1)
prints one JSON line {"status","headers","body","receipt"}; exit 0 if a response arrived, 2 on error
`;
  let values;
  let positionals;
  try {
    ({ values, positionals } = parseArgs({
      allowPositionals: true,
      options: {
        method: { type: "string" },
        body: { type: "string" },
        header: { type: "string", multiple: true, default: [] },
        help: { type: "boolean", short: "h" },
        ...extraOptions,
      },
    }));
  } catch (err) {
    usage(text, err.message);
  }
  if (values.help) usage(text);
  if (positionals.length !== 1) usage(text, "exactly one URL is required");

  let lastStatus;
  const observedFetch = async (input, init) => {
    const res = await fetch(input, init);
    lastStatus = res.status;
    return res;
  };
  try {
    const url = new URL(positionals[0]).toString();
    // A plain object: x402-fetch 1.2 spreads init.headers, which would drop a Headers instance.
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

    const key = process.env.PAYER_PRIVATE_KEY || anvilDevKey(1);
    const payFetch = await makeFetch(key.startsWith("0x") ? key : `0x${key}`, values, observedFetch);
    const res = await payFetch(url, init);

    const responseHeaders = {};
    for (const [k, v] of res.headers) responseHeaders[k.toLowerCase()] = v;
    const body = await res.text();
    const out = { status: res.status, headers: responseHeaders, body, receipt: decodeReceipt(res.headers) };
    process.stdout.write(`${JSON.stringify(out)}\n`, () => process.exit(0));
  } catch (err) {
    fail(err, lastStatus);
  }
}
