// Managed-identity client for the SDK tests: @azure/identity's ManagedIdentityCredential, unmodified,
// against whatever endpoint the environment names; prints one JSON line.
// usage: node mi_client.mjs RESOURCE [CLIENT_ID]   (SDK_NODE_DIR: the folder holding node_modules)
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.SDK_NODE_DIR ?? ".", "x.js"));
const { ManagedIdentityCredential } = require("@azure/identity");

const [resource, clientId] = process.argv.slice(2);
try {
  const cred = clientId ? new ManagedIdentityCredential({ clientId }) : new ManagedIdentityCredential();
  const tok = await cred.getToken(resource + "/.default");
  console.log(JSON.stringify({ ok: true, token: tok.token, expires_on: tok.expiresOnTimestamp }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: `${e.name}: ${e.message}` }));
}
