// A real x402 paid service and facilitator for Paygent's tests, on 127.0.0.1, settling on a local chain.
//
// The v2 service is the reference middleware (@x402/express) and the facilitator is the reference
// x402Facilitator with the EVM "exact" scheme: Paygent must interoperate with both. The v1 service speaks the v1
// wire form (JSON `accepts`, `X-PAYMENT`, `X-PAYMENT-RESPONSE`) over the same reference facilitator, since the
// reference middleware answers only v2. A few routes misbehave on purpose, for the failure tests.
//
// Input, as JSON in PEER_CONFIG: {rpc, chainId, v1Network?, facilitatorKey, asset, name, version, payTo}.
// Output: one JSON line on stdout, {service, facilitator}, once both listen.
import express from "express";
import http from "node:http";
import { x402Facilitator } from "@x402/core/facilitator";
import { HTTPFacilitatorClient } from "@x402/core/server";
import { paymentMiddleware, x402ResourceServer } from "@x402/express";
import { toFacilitatorEvmSigner } from "@x402/evm";
import { ExactEvmScheme as FacilitatorScheme } from "@x402/evm/exact/facilitator";
import { ExactEvmScheme as ServerScheme } from "@x402/evm/exact/server";
import { ExactEvmSchemeV1 as FacilitatorSchemeV1 } from "@x402/evm/exact/v1/facilitator";
import {
  PAYMENT_IDENTIFIER,
  declarePaymentIdentifierExtension,
  extractPaymentIdentifier,
} from "@x402/extensions/payment-identifier";
import { createWalletClient, http as viemHttp, publicActions, defineChain } from "viem";
import { privateKeyToAccount } from "viem/accounts";

const cfg = JSON.parse(process.env.PEER_CONFIG);
const network = `eip155:${cfg.chainId}`;
const chain = defineChain({
  id: cfg.chainId,
  name: "local",
  nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
  rpcUrls: { default: { http: [cfg.rpc] } },
});
const account = privateKeyToAccount(cfg.facilitatorKey);
// A short polling interval: viem waits 4 s between receipt polls by default, which would swamp every timing.
const wallet = createWalletClient({ account, chain, transport: viemHttp(cfg.rpc), pollingInterval: 50 }).extend(
  publicActions,
);
const signer = toFacilitatorEvmSigner({ ...wallet, address: account.address });

const facilitator = new x402Facilitator().register(network, new FacilitatorScheme(signer));
if (cfg.v1Network) facilitator.registerV1(cfg.v1Network, new FacilitatorSchemeV1(signer));

function listen(app) {
  return new Promise((resolve) => {
    const server = http.createServer(app).listen(0, "127.0.0.1", () => resolve(server.address().port));
  });
}

const fApp = express();
fApp.use(express.json());
const handle = (fn) => async (req, res) => {
  try {
    res.json(await fn(req.body));
  } catch (e) {
    res.status(500).json({ error: String(e?.message ?? e) });
  }
};
fApp.post("/verify", handle((b) => facilitator.verify(b.paymentPayload, b.paymentRequirements)));
fApp.post("/settle", handle((b) => facilitator.settle(b.paymentPayload, b.paymentRequirements)));
fApp.get("/supported", (_req, res) => res.json(facilitator.getSupported()));
const facilitatorUrl = `http://127.0.0.1:${await listen(fApp)}`;

const units = (dollars) => String(Math.round(Number(dollars) * 1e6));
const serverScheme = new ServerScheme().registerMoneyParser(async (amount) => ({
  amount: units(amount),
  asset: cfg.asset,
  extra: { name: cfg.name, version: cfg.version },
}));
const resourceServer = new x402ResourceServer(new HTTPFacilitatorClient({ url: facilitatorUrl })).register(
  network,
  serverScheme,
);
const paid = (price) => ({
  accepts: { scheme: "exact", price, network, payTo: cfg.payTo, maxTimeoutSeconds: 120 },
  description: typeof price === "string" ? `data for ${price}` : "data for its current price",
});

const app = express();
// Counts requests that reached a paid resource, so tests can tell that a resource was served once.
const served = {};
const body = (route) => (_req, res) => {
  served[route] = (served[route] ?? 0) + 1;
  res.json({ data: `the ${route} resource`, served: served[route] });
};

// v1: the wire form of x402 version 1, settled by the same reference facilitator.
const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64");
const v1Requirements = (req, dollars) => ({
  scheme: "exact",
  network: cfg.v1Network,
  maxAmountRequired: units(dollars),
  resource: `http://${req.headers.host}${req.originalUrl}`,
  description: `data for $${dollars}`,
  mimeType: "application/json",
  payTo: cfg.payTo,
  maxTimeoutSeconds: 120,
  asset: cfg.asset,
  extra: { name: cfg.name, version: cfg.version },
});
app.get("/v1/:price", async (req, res) => {
  const requirements = v1Requirements(req, req.params.price);
  const header = req.get("X-PAYMENT");
  if (!header) return res.status(402).json({ x402Version: 1, error: "X-PAYMENT header is required", accepts: [requirements] });
  let payload;
  try {
    payload = JSON.parse(Buffer.from(header, "base64").toString());
  } catch {
    return res.status(402).json({ x402Version: 1, error: "malformed X-PAYMENT", accepts: [requirements] });
  }
  const verified = await facilitator.verify(payload, requirements).catch((e) => ({ isValid: false, invalidReason: String(e) }));
  if (!verified.isValid) return res.status(402).json({ x402Version: 1, error: verified.invalidReason, accepts: [requirements] });
  const settled = await facilitator.settle(payload, requirements).catch((e) => ({ success: false, errorReason: String(e) }));
  if (!settled.success) return res.status(402).json({ x402Version: 1, error: settled.errorReason, accepts: [requirements] });
  res.set("X-PAYMENT-RESPONSE", b64(settled));
  body(`v1/${req.params.price}`)(req, res);
});

// Misbehaving services, for the failure paths.
app.get("/bad/malformed", (_req, res) => res.status(402).set("PAYMENT-REQUIRED", "not base64 json!").send("pay me"));
// A v2 offer of $0.10 with a short validity window, for the routes below.
const badOffer = (req) => ({
  x402Version: 2,
  error: "payment required",
  resource: { url: `http://${req.headers.host}${req.originalUrl}` },
  accepts: [{ scheme: "exact", network, amount: "100000", asset: cfg.asset, payTo: cfg.payTo, maxTimeoutSeconds: 10, extra: { name: cfg.name, version: cfg.version } }],
});
app.get("/bad/always-402", (req, res) => res.status(402).set("PAYMENT-REQUIRED", b64(badOffer(req))).json({}));
// Submits an authorization to the token itself, as a settler whose clock lags the wall clock would: the chain's
// clock alone decides whether it is still valid.
const authorizationAbi = [{
  type: "function", name: "transferWithAuthorization", stateMutability: "nonpayable", outputs: [],
  inputs: ["from", "to", "value", "validAfter", "validBefore", "nonce"].map((name, i) => ({
    name, type: i < 2 ? "address" : i < 5 ? "uint256" : "bytes32",
  })).concat([{ name: "signature", type: "bytes" }]),
}];
const settleOnChain = async ({ payload: { authorization: a, signature } }) => {
  const hash = await wallet.writeContract({
    address: cfg.asset, abi: authorizationAbi, functionName: "transferWithAuthorization",
    args: [a.from, a.to, BigInt(a.value), BigInt(a.validAfter), BigInt(a.validBefore), a.nonce, signature],
  });
  await wallet.waitForTransactionReceipt({ hash });
};
// Refuses the paid request, then settles its authorization `after` milliseconds later (two seconds unless given),
// through the facilitator or, with `direct`, on chain itself.
app.get("/bad/settles-late", (req, res) => {
  const header = req.get("PAYMENT-SIGNATURE");
  res.status(402).set("PAYMENT-REQUIRED", b64(badOffer(req))).json({ error: "try again later" });
  if (header) {
    const payload = JSON.parse(Buffer.from(header, "base64").toString());
    const settle = req.query.direct ? () => settleOnChain(payload) : () => facilitator.settle(payload, payload.accepted);
    setTimeout(() => settle().catch((e) => console.error(`late settlement failed: ${e}`)), Number(req.query.after ?? 2000));
  }
});
app.get("/bad/unknown-asset", (req, res) => {
  const offer = {
    x402Version: 2,
    error: "payment required",
    resource: { url: `http://${req.headers.host}${req.originalUrl}` },
    accepts: [{ scheme: "exact", network, amount: "100000", asset: "0x000000000000000000000000000000000000dEaD", payTo: cfg.payTo, maxTimeoutSeconds: 120, extra: { name: "Nope", version: "1" } }],
  };
  res.status(402).set("PAYMENT-REQUIRED", b64(offer)).json({});
});
app.get("/served", (_req, res) => res.json(served));

// A price the test sets (`/set-price?dollars=12`), asked afresh on every request: a service that changes its price
// between the quote a person approved and the payment.
let variablePrice = "1";
app.get("/set-price", (req, res) => {
  variablePrice = String(req.query.dollars);
  res.json({ price: variablePrice });
});
app.use(
  paymentMiddleware(
    {
      "GET /v2/cheap": paid("$0.10"),
      "GET /v2/premium": paid("$25"),
      "GET /v2/variable": paid(() => `$${variablePrice}`),
      // Declares the payment-identifier extension: a client may send its idempotency key for the payment.
      "GET /v2/identified": {
        ...paid("$0.10"),
        extensions: { [PAYMENT_IDENTIFIER]: declarePaymentIdentifierExtension() },
      },
    },
    resourceServer,
  ),
);
app.get("/v2/cheap", body("v2/cheap"));
app.get("/v2/premium", body("v2/premium"));
app.get("/v2/variable", body("v2/variable"));
// Answers with the payment identifier the client sent, as the service would dedupe on it.
app.get("/v2/identified", (req, res) => {
  const payload = JSON.parse(Buffer.from(req.get("PAYMENT-SIGNATURE"), "base64").toString());
  res.json({ data: "the v2/identified resource", payment_id: extractPaymentIdentifier(payload) });
});
app.get("/free", body("free"));

const serviceUrl = `http://127.0.0.1:${await listen(app)}`;
console.log(JSON.stringify({ service: serviceUrl, facilitator: facilitatorUrl }));
