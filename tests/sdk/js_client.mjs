// Drives a real @azure/identity credential once and prints one JSON line.
//
// usage: node js_client.mjs MODE [SCOPE]      (SCOPE defaults to https://management.azure.com/.default)
//
// Modes (add more to MODES, e.g. managed-identity ones, without touching the others):
//   workload   new WorkloadIdentityCredential({ disableInstanceDiscovery: true }), configured by the
//              environment (AZURE_AUTHORITY_HOST, AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE)
//   assertion  new ClientAssertionCredential(tenant, client, () => token file, { authorityHost, disableInstanceDiscovery: true })
//
// The packages are loaded from SDK_NODE_DIR (default: <repo>/.cache/sdk/node, see scripts/install-sdks).
// TLS trust comes from NODE_EXTRA_CA_CERTS.
// Output: {"ok":true,"token":"...","expires_on":N} or {"ok":false,"error":"...","codes":[AADSTS numbers]}.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const nodeDir = process.env.SDK_NODE_DIR || join(here, "..", "..", ".cache", "sdk", "node");
const require = createRequire(join(nodeDir, "package.json"));

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const readTokenFile = () => readFileSync(env("AZURE_FEDERATED_TOKEN_FILE"), "utf8");

const MODES = {
  async workload(scope) {
    const { WorkloadIdentityCredential } = require("@azure/identity");
    return new WorkloadIdentityCredential({ disableInstanceDiscovery: true }).getToken(scope);
  },
  async assertion(scope) {
    const { ClientAssertionCredential } = require("@azure/identity");
    const credential = new ClientAssertionCredential(
      env("AZURE_TENANT_ID"),
      env("AZURE_CLIENT_ID"),
      async () => readTokenFile().trim(),
      { authorityHost: env("AZURE_AUTHORITY_HOST"), disableInstanceDiscovery: true },
    );
    return credential.getToken(scope);
  },
};

async function main() {
  const [mode, scope = "https://management.azure.com/.default"] = process.argv.slice(2);
  if (!MODES[mode]) {
    console.log(JSON.stringify({ ok: false, error: `usage: js_client.mjs {${Object.keys(MODES)}} [SCOPE]`, codes: [] }));
    return 2;
  }
  let out;
  try {
    const token = await MODES[mode](scope);
    out = { ok: true, token: token.token, expires_on: Math.floor(token.expiresOnTimestamp / 1000) };
  } catch (e) {
    const message = `${e?.name}: ${e?.message}`;
    const codes = [...new Set([...message.matchAll(/AADSTS(\d+)/g)].map((m) => Number(m[1])))].sort((a, b) => a - b);
    out = { ok: false, error: message, codes };
  }
  console.log(JSON.stringify(out));
  return 0;
}

process.exitCode = await main();
