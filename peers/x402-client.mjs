// The reference x402 client (@x402/fetch with the EVM "exact" scheme), paying on command, for the benchmark's
// comparison with Paygent: each line on stdin is a URL to pay; each line on stdout is {ms, status} for it.
//
// Input, as JSON in PEER_CONFIG: {key, network, asset}: the paying wallet's private key, and the test token (not one
// of the client's default assets, so it is allowed explicitly, at most $1 a payment like Paygent's maximum here).
// Output: {ready: true} once it takes commands, then one line per payment.
import readline from "node:readline";
import { wrapFetchWithPayment, x402Client } from "@x402/fetch";
import { registerExactEvmScheme } from "@x402/evm/exact/client";
import { privateKeyToAccount } from "viem/accounts";

const cfg = JSON.parse(process.env.PEER_CONFIG);
const client = new x402Client().setSpendControls({
  allowedAssets: [{ network: cfg.network, asset: cfg.asset, maxAmountPerPayment: "1000000" }],
});
registerExactEvmScheme(client, { signer: privateKeyToAccount(cfg.key) });
const pay = wrapFetchWithPayment(fetch, client);

console.log(JSON.stringify({ ready: true }));
for await (const url of readline.createInterface({ input: process.stdin })) {
  const started = performance.now();
  const resp = await pay(url);
  await resp.arrayBuffer();
  console.log(JSON.stringify({ ms: performance.now() - started, status: resp.status }));
}
