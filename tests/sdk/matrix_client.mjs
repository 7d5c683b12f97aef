// Client-release matrix (tests/sdk_legacy.rs): @azure/identity's ManagedIdentityCredential, of whatever
// release SDK_NODE_DIR holds, unmodified; prints one JSON line.
//
// usage: node matrix_client.mjs RESOURCE [CLIENT_ID]
// 1. getToken once, and report expiresOnTimestamp as the SDK computed it (JSON null when NaN).
// 2. The client's own cache: core-rest-pipeline's bearerTokenAuthenticationPolicy (the token cycler every
//    Azure JS client uses) over two requests, with a transport that never leaves the process; it must
//    ask the credential once. (With NaN it also asks once, and then never again: that is why the
//    expiry itself is checked too.)
// Output: {"ok":true,"version":"1.5.2","token":"...","expires_on_ms":N|null,"cycler_token_requests":N|null}
//      (null: no core-rest-pipeline in that release's tree, as in 1.4.0)
//      or {"ok":false,"version":"...","error":"Name: message"}
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.SDK_NODE_DIR ?? ".", "x.js"));
const [resource, clientId] = process.argv.slice(2);
const scope = resource + "/.default";
let version = "?";
let out;
try {
  version = require("@azure/identity/package.json").version;
  const { ManagedIdentityCredential } = require("@azure/identity");
  const cred = clientId ? new ManagedIdentityCredential(clientId) : new ManagedIdentityCredential();
  const tok = await cred.getToken(scope);
  out = { ok: true, version, token: tok.token, expires_on_ms: tok.expiresOnTimestamp, cycler_token_requests: null };
  // Releases before 1.5 are built on core-http and bring no core-rest-pipeline: no cycler run.
  let core;
  try {
    core = require("@azure/core-rest-pipeline");
  } catch {
    console.log(JSON.stringify(out));
    process.exit(0);
  }
  let asked = 0;
  const counting = {
    getToken: async (scopes, options) => {
      asked += 1;
      return cred.getToken(scopes, options);
    },
  };
  const pipeline = core.createEmptyPipeline();
  pipeline.addPolicy(core.bearerTokenAuthenticationPolicy({ credential: counting, scopes: scope }));
  const transport = { sendRequest: async (request) => ({ request, status: 200, headers: core.createHttpHeaders() }) };
  for (let i = 0; i < 2; i++) {
    await pipeline.sendRequest(transport, core.createPipelineRequest({ url: "https://example.invalid/" }));
  }
  out = { ok: true, version, token: tok.token, expires_on_ms: tok.expiresOnTimestamp, cycler_token_requests: asked };
} catch (e) {
  out = { ok: false, version, error: `${e?.name}: ${e?.message}` };
}
console.log(JSON.stringify(out));
