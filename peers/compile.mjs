// Compiles the test contracts with solc-js (offline) into contracts/artifacts.json, which is committed so that
// tests deploy without compiling. `node compile.mjs --check` fails if the artifact no longer matches the source.
import { readFileSync, writeFileSync } from "node:fs";
import solc from "solc";

const sources = ["TestUSDC.sol", "Multicall3.sol"];
const input = {
  language: "Solidity",
  sources: Object.fromEntries(
    sources.map((f) => [f, { content: readFileSync(new URL(`contracts/${f}`, import.meta.url), "utf8") }]),
  ),
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors ?? []).filter((e) => e.severity === "error");
if (errors.length) {
  console.error(errors.map((e) => e.formattedMessage).join("\n"));
  process.exit(1);
}
const artifacts = { compiler: solc.version() };
for (const file of sources) {
  for (const [name, c] of Object.entries(output.contracts[file])) {
    artifacts[name] = {
      abi: c.abi,
      bytecode: `0x${c.evm.bytecode.object}`,
      deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
    };
  }
}
const text = `${JSON.stringify(artifacts, null, 1)}\n`;
const path = new URL("contracts/artifacts.json", import.meta.url);
if (process.argv.includes("--check")) {
  if (readFileSync(path, "utf8") !== text) {
    console.error("contracts/artifacts.json does not match the sources: run `node peers/compile.mjs`");
    process.exit(1);
  }
  console.log("contract artifacts match their sources");
} else {
  writeFileSync(path, text);
  console.log(`compiled ${Object.keys(artifacts).length - 1} contracts with solc ${artifacts.compiler}`);
}
