// A real MCP client, the official TypeScript SDK, driven line by line by Paygent's tests.
//
//   node mcp-client.mjs http <url> <token>       streamable HTTP, the key as a Bearer header
//   node mcp-client.mjs stdio <command> [args]   launches a stdio server, as a desktop client does
//
// Each line on stdin is one order, run at once (several may be in flight):
//   {"id": 1, "op": "list"}                                          tools/list
//   {"id": 4, "op": "resources"}                                     resources/list and resources/templates/list
//   {"id": 5, "op": "read", "uri": "paygent://..."}                  resources/read
//   {"id": 2, "op": "call", "name": "pay", "arguments": {...}}       tools/call, with a progress token
//   {"id": 3, "op": "cancel", "target": 2}                           cancels call 2 (notifications/cancelled)
// Each line on stdout answers one: {"id", "result"} or {"id", "error"}, and {"id", "progress"} while a call runs.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { createInterface } from "node:readline";

const [mode, ...rest] = process.argv.slice(2);
const transport =
  mode === "http"
    ? new StreamableHTTPClientTransport(new URL(rest[0]), {
        requestInit: { headers: { Authorization: `Bearer ${rest[1]}` } },
      })
    : new StdioClientTransport({ command: rest[0], args: rest.slice(1), env: process.env, stderr: "inherit" });

const say = (line) => process.stdout.write(JSON.stringify(line) + "\n");
const client = new Client({ name: "paygent-tests", version: "1.0.0" });
try {
  await client.connect(transport);
  say({ id: 0, result: { connected: client.getServerVersion() } });
} catch (e) {
  say({ id: 0, error: String(e?.message ?? e) });
  process.exit(1);
}

const running = new Map();
const run = async (order) => {
  if (order.op === "list") return client.listTools();
  if (order.op === "resources") {
    const [listed, templates] = [await client.listResources(), await client.listResourceTemplates()];
    return { resources: listed.resources, templates: templates.resourceTemplates };
  }
  if (order.op === "read") return client.readResource({ uri: order.uri });
  if (order.op === "cancel") {
    running.get(order.target)?.abort("cancelled by the test");
    return { cancelled: order.target };
  }
  const abort = new AbortController();
  running.set(order.id, abort);
  try {
    return await client.callTool({ name: order.name, arguments: order.arguments ?? {} }, undefined, {
      signal: abort.signal,
      timeout: order.timeout_ms ?? 60_000,
      resetTimeoutOnProgress: true,
      onprogress: (progress) => say({ id: order.id, progress }),
    });
  } finally {
    running.delete(order.id);
  }
};

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const order = JSON.parse(line);
  run(order).then(
    (result) => say({ id: order.id, result }),
    (e) => say({ id: order.id, error: String(e?.message ?? e) }),
  );
});
lines.on("close", async () => {
  await client.close();
  process.exit(0);
});
