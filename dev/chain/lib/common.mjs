// Shared helpers for the dev/chain scripts: anvil dev accounts, chain definition, CLI plumbing.

import { defineChain, toHex } from "viem";
import { mnemonicToAccount, privateKeyToAccount } from "viem/accounts";

export const DEFAULT_RPC = "http://127.0.0.1:8545";
export const MULTICALL3_ADDRESS = "0xcA11bde05977b3631167028862bE2a173976CA11";

/** anvil's (and hardhat's) well-known development mnemonic; accounts 0..9 are pre-funded. */
const ANVIL_MNEMONIC = "test test test test test test test test test test test junk";

/** Private key (0x-hex) of anvil dev account #index. */
export function anvilDevKey(index) {
  const account = mnemonicToAccount(ANVIL_MNEMONIC, { addressIndex: index });
  return toHex(account.getHdKey().privateKey);
}

/** viem local account from a 0x-prefixed private key (a missing 0x is tolerated). */
export function accountFromKey(key) {
  const hex = key.startsWith("0x") ? key : `0x${key}`;
  if (!/^0x[0-9a-fA-F]{64}$/.test(hex)) throw new Error("private key must be 32 bytes of hex");
  return privateKeyToAccount(hex);
}

/** A viem chain object for a local node, with Multicall3 at its canonical address. */
export function localChain(chainId, rpcUrl) {
  return defineChain({
    id: chainId,
    name: `local-${chainId}`,
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [rpcUrl] } },
    contracts: { multicall3: { address: MULTICALL3_ADDRESS } },
  });
}

/** JSON.stringify that renders bigint as a decimal string. */
export function toJson(value) {
  return JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? v.toString() : v));
}

/** Message of an error including its `cause` chain (viem nests the useful part there). */
export function errorMessage(err) {
  if (!(err instanceof Error)) return String(err);
  const parts = [err.shortMessage || err.message];
  let cause = err.cause;
  for (let depth = 0; cause && depth < 4; depth++, cause = cause.cause) {
    const m = cause instanceof Error ? cause.shortMessage || cause.message : String(cause);
    if (m && !parts.includes(m)) parts.push(m);
  }
  return parts.join(": ");
}

/** Exit with a one-line usage error on stderr. */
export function usage(text, problem) {
  if (problem) process.stderr.write(`error: ${problem}\n`);
  process.stderr.write(text);
  process.exit(problem ? 64 : 0);
}
