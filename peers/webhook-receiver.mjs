// A webhook receiver for Paygent's tests: it verifies every delivery with the reference Standard Webhooks library
// (`standardwebhooks`) against the secrets it is given, and can be taken down and brought back.
//
// POST /hook takes deliveries: 500 while down; 400 unless a given secret verifies it; else 204, and it is kept.
// POST /control {down?, secrets?} sets its state. GET /received lists what it kept, in arrival order:
// {id, seq, type, secret} (`secret` the index of the one that verified it). GET /rejected counts refusals.
// Output: one JSON line on stdout, {url}, once it listens on 127.0.0.1.
import http from "node:http";
import { Webhook } from "standardwebhooks";

let down = false;
let secrets = [];
const received = [];
let rejected = 0;

const read = (req) =>
  new Promise((resolve) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString()));
  });

const verifiedBy = (body, headers) =>
  secrets.findIndex((secret) => {
    try {
      new Webhook(secret).verify(body, headers);
      return true;
    } catch {
      return false;
    }
  });

const server = http.createServer(async (req, res) => {
  const body = await read(req);
  const answer = (status, json) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(json === undefined ? "" : JSON.stringify(json));
  };
  if (req.method === "POST" && req.url === "/control") {
    const change = JSON.parse(body);
    if (change.down !== undefined) down = change.down;
    if (change.secrets !== undefined) secrets = change.secrets;
    return answer(200, { down, secrets: secrets.length });
  }
  if (req.method === "GET" && req.url === "/received") return answer(200, received);
  if (req.method === "GET" && req.url === "/rejected") return answer(200, { rejected });
  if (req.method !== "POST" || req.url !== "/hook") return answer(404, {});
  if (down) return answer(500, { error: "down for a while" });
  const secret = verifiedBy(body, req.headers);
  if (secret < 0) {
    rejected += 1;
    return answer(400, { error: "no secret verifies this delivery" });
  }
  const event = JSON.parse(body);
  received.push({ id: req.headers["webhook-id"], seq: event.seq, type: event.type, secret });
  answer(204);
});
server.listen(0, "127.0.0.1", () => {
  console.log(JSON.stringify({ url: `http://127.0.0.1:${server.address().port}` }));
});
