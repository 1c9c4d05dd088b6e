#!/usr/bin/env node
// Deploys the TestUSD EIP-3009 token and a Multicall3-compatible contract to a local anvil node.
//
//   node deploy.mjs [--rpc URL] [--out FILE] [--wait SECONDS]
//
// Prints one JSON line: {"token":"0x…","chainId":84532,"multicall3":"0xcA11…"}.
// Compiles contracts/*.sol in-process with the pure-JS `solc`; artifacts are cached in .build/
// keyed by a hash of the sources, compiler version and settings.

import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, writeFileSync } from "node:fs";
import { dirname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { createPublicClient, createWalletClient, getAddress, http, publicActions } from "viem";

import {
  DEFAULT_RPC,
  MULTICALL3_ADDRESS,
  accountFromKey,
  anvilDevKey,
  errorMessage,
  localChain,
  toJson,
  usage,
} from "./lib/common.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const CONTRACTS_DIR = join(HERE, "contracts");
const BUILD_DIR = join(HERE, ".build");
const NODE_MODULES = join(HERE, "node_modules");

const MINT_AMOUNT = 1000_000000n; // 1000 tokens, 6 decimals
const MINT_TO_ACCOUNTS = [1, 2, 3, 4, 5]; // anvil dev account indexes

const USAGE = `usage: node deploy.mjs [--rpc URL] [--out FILE] [--wait SECONDS]
  --rpc URL       JSON-RPC endpoint of anvil (default ${DEFAULT_RPC})
  --out FILE      also write the result JSON to FILE
  --wait SECONDS  how long to wait for the RPC endpoint to come up (default 10)
env: DEPLOYER_PRIVATE_KEY (default: anvil dev account #0)
`;

function log(msg) {
  process.stderr.write(`deploy: ${msg}\n`);
}

// ------------------------------------------------------------------------------------ compile

const SOLC_SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

/** Resolves `import "@openzeppelin/…"` (and any other package path) from our node_modules. */
function findImport(path) {
  const full = normalize(join(NODE_MODULES, path));
  if (!full.startsWith(NODE_MODULES + "/") || !existsSync(full)) {
    return { error: `import not found: ${path}` };
  }
  return { contents: readFileSync(full, "utf8") };
}

function packageVersion(name) {
  return JSON.parse(readFileSync(join(NODE_MODULES, name, "package.json"), "utf8")).version;
}

/** Returns {TestUSD: {abi, bytecode, …}, MiniMulticall: {abi, bytecode, deployedBytecode}}. */
async function compile() {
  const sources = {};
  for (const file of readdirSync(CONTRACTS_DIR).filter((f) => f.endsWith(".sol")).sort()) {
    sources[`contracts/${file}`] = { content: readFileSync(join(CONTRACTS_DIR, file), "utf8") };
  }
  const input = { language: "Solidity", sources, settings: SOLC_SETTINGS };

  const key = createHash("sha256")
    .update(toJson({ solc: packageVersion("solc"), oz: packageVersion("@openzeppelin/contracts"), input }))
    .digest("hex")
    .slice(0, 24);
  const cacheFile = join(BUILD_DIR, `artifacts-${key}.json`);
  if (existsSync(cacheFile)) {
    log(`compile: cache hit (${cacheFile})`);
    return JSON.parse(readFileSync(cacheFile, "utf8"));
  }

  const started = Date.now();
  const { default: solc } = await import("solc"); // ~1 s to load; only needed on a cache miss
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) {
    if (e.severity !== "error") log(`solc ${e.severity}: ${e.formattedMessage.trim()}`);
  }
  if (errors.length) {
    throw new Error(`solc failed:\n${errors.map((e) => e.formattedMessage).join("\n")}`);
  }
  const artifact = (file, name) => {
    const c = output.contracts[`contracts/${file}`][name];
    return {
      abi: c.abi,
      bytecode: `0x${c.evm.bytecode.object}`,
      deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
    };
  };
  const artifacts = {
    solcVersion: solc.version(),
    TestUSD: artifact("TestUSD.sol", "TestUSD"),
    MiniMulticall: artifact("MiniMulticall.sol", "MiniMulticall"),
  };
  log(`compile: ${Date.now() - started} ms with solc ${solc.version()}`);

  mkdirSync(BUILD_DIR, { recursive: true });
  const tmp = `${cacheFile}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(artifacts));
  renameSync(tmp, cacheFile); // atomic, so concurrent runs never read a half-written file
  return artifacts;
}

// ------------------------------------------------------------------------------------- deploy

async function waitForChainId(client, seconds) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    try {
      return await client.getChainId();
    } catch (err) {
      if (Date.now() >= deadline) throw new Error(`RPC not reachable: ${errorMessage(err)}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

async function main() {
  let opts;
  try {
    ({ values: opts } = parseArgs({
      options: {
        rpc: { type: "string", default: DEFAULT_RPC },
        out: { type: "string" },
        wait: { type: "string", default: "10" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (err) {
    usage(USAGE, err.message);
  }
  if (opts.help) usage(USAGE);

  const started = Date.now();
  const artifacts = await compile();

  const transport = http(opts.rpc);
  const chainId = await waitForChainId(createPublicClient({ transport }), Number(opts.wait));
  const chain = localChain(chainId, opts.rpc);
  const deployer = accountFromKey(process.env.DEPLOYER_PRIVATE_KEY || anvilDevKey(0));
  const client = createWalletClient({ account: deployer, chain, transport }).extend(publicActions);

  // Multicall3-compatible code at the canonical address, so that the facilitator's diagnostics
  // (tryAggregate of balanceOf/name/version/authorizationState) report precise reasons.
  await client.request({
    method: "anvil_setCode",
    params: [MULTICALL3_ADDRESS, artifacts.MiniMulticall.deployedBytecode],
  });
  const mcCode = await client.getCode({ address: MULTICALL3_ADDRESS });
  if (!mcCode || mcCode === "0x") throw new Error("anvil_setCode did not install Multicall3 code");

  const deployHash = await client.deployContract({
    abi: artifacts.TestUSD.abi,
    bytecode: artifacts.TestUSD.bytecode,
  });
  const deployReceipt = await client.waitForTransactionReceipt({ hash: deployHash });
  if (deployReceipt.status !== "success" || !deployReceipt.contractAddress) {
    throw new Error(`TestUSD deployment failed (tx ${deployHash})`);
  }
  const token = getAddress(deployReceipt.contractAddress);

  for (const index of MINT_TO_ACCOUNTS) {
    const to = accountFromKey(anvilDevKey(index)).address;
    const hash = await client.writeContract({
      address: token,
      abi: artifacts.TestUSD.abi,
      functionName: "mint",
      args: [to, MINT_AMOUNT],
    });
    const receipt = await client.waitForTransactionReceipt({ hash });
    if (receipt.status !== "success") throw new Error(`mint to ${to} failed (tx ${hash})`);
  }
  log(
    `TestUSD at ${token} on chain ${chainId}; minted ${MINT_AMOUNT} to dev accounts ` +
      `#${MINT_TO_ACCOUNTS.join(",#")}; Multicall3 at ${MULTICALL3_ADDRESS}; ${Date.now() - started} ms`,
  );

  const result = JSON.stringify({ token, chainId, multicall3: MULTICALL3_ADDRESS });
  if (opts.out) writeFileSync(opts.out, `${result}\n`);
  // Exit explicitly: the emscripten solc module can keep the event loop busy for seconds.
  process.stdout.write(`${result}\n`, () => process.exit(0));
}

main().catch((err) => {
  log(`error: ${errorMessage(err)}`);
  process.exit(1);
});
