// A stand-in for Slack in Paygent's tests: its Web API records the messages it is sent, and it presses their
// buttons the way Slack does, signing each interaction with the app's signing secret.
//
// PEER_CONFIG: {token, signing_secret}. The Web API is under /api: chat.postMessage and chat.update take JSON with
// `Authorization: Bearer <token>` (otherwise {ok:false, error:"invalid_auth"}) and answer {ok, channel, ts};
// channel "CGONE" is {ok:false, error:"channel_not_found"}. GET /calls lists [{method, body, answer}] in arrival order.
// POST /press {url, user, action_id, value, signed_ago?, secret?} sends Paygent a block_actions interaction as
// Slack would (form-encoded `payload`, X-Slack-Request-Timestamp, X-Slack-Signature = v0=hex HMAC-SHA256 of
// "v0:<timestamp>:<body>"), `signed_ago` seconds in the past and with `secret` instead of the app's if given,
// and answers {status, content_type, body}. Its `response_url` is POST /respond/... here, kept in the calls as
// method "response_url".
// Output: one JSON line on stdout, {url}, once it listens on 127.0.0.1.
import http from "node:http";
import crypto from "node:crypto";

const config = JSON.parse(process.env.PEER_CONFIG);
let selfUrl = "";
const calls = [];
let lastTs = 1700000000;

const read = (req) =>
  new Promise((resolve) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString()));
  });

const reply = (method, message) => {
  if (message.channel === "CGONE") return { ok: false, error: "channel_not_found" };
  if (method === "chat.postMessage") {
    lastTs += 1;
    return { ok: true, channel: message.channel, ts: `${lastTs}.000100`, message };
  }
  if (method === "chat.update") return { ok: true, channel: message.channel, ts: message.ts };
  return { ok: false, error: "unknown_method" };
};

const webApi = (method, req, body) => {
  if (req.headers.authorization !== `Bearer ${config.token}`) return { ok: false, error: "invalid_auth" };
  const message = JSON.parse(body);
  const answer = reply(method, message);
  calls.push({ method, body: message, answer });
  return answer;
};

const press = async (p) => {
  const payload = {
    type: "block_actions",
    user: { id: p.user, username: p.user.toLowerCase(), team_id: "T0PAYGENT" },
    team: { id: "T0PAYGENT", domain: "paygent-tests" },
    api_app_id: "A0PAYGENT",
    container: { type: "message", channel_id: "C0PAYGENT" },
    trigger_id: "1.2.3",
    response_url: `${selfUrl}/respond/T0PAYGENT/1/x`,
    actions: [{ type: "button", action_id: p.action_id, block_id: "b", value: p.value,
      action_ts: `${Date.now() / 1000}` }],
  };
  const body = new URLSearchParams({ payload: JSON.stringify(payload) }).toString();
  const timestamp = `${Math.floor(Date.now() / 1000) - (p.signed_ago ?? 0)}`;
  const hmac = crypto.createHmac("sha256", p.secret ?? config.signing_secret);
  hmac.update(`v0:${timestamp}:${body}`);
  const resp = await fetch(p.url, {
    method: "POST",
    headers: {
      "content-type": "application/x-www-form-urlencoded",
      "x-slack-request-timestamp": timestamp,
      "x-slack-signature": `v0=${hmac.digest("hex")}`,
    },
    body,
  });
  return { status: resp.status, content_type: resp.headers.get("content-type"), body: await resp.json() };
};

const server = http.createServer(async (req, res) => {
  const body = await read(req);
  const answer = (status, json) => {
    res.writeHead(status, { "content-type": "application/json; charset=utf-8" });
    res.end(JSON.stringify(json));
  };
  try {
    if (req.method === "POST" && req.url.startsWith("/api/")) return answer(200, webApi(req.url.slice(5), req, body));
    if (req.method === "GET" && req.url === "/calls") return answer(200, calls);
    if (req.method === "POST" && req.url === "/press") return answer(200, await press(JSON.parse(body)));
    if (req.method === "POST" && req.url.startsWith("/respond/")) {
      calls.push({ method: "response_url", body: JSON.parse(body) });
      return answer(200, { ok: true });
    }
    answer(404, { error: "no such route" });
  } catch (e) {
    answer(500, { error: String(e) });
  }
});
server.listen(0, "127.0.0.1", () => {
  selfUrl = `http://127.0.0.1:${server.address().port}`;
  console.log(JSON.stringify({ url: selfUrl }));
});
