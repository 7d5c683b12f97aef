#!/usr/bin/env python3
"""Drives a real Python Azure SDK credential once and prints one JSON line.

usage: py_client.py MODE [SCOPE]        (SCOPE defaults to https://management.azure.com/.default)

Modes (add more to MODES, e.g. managed-identity ones, without touching the others):
  workload   azure.identity.WorkloadIdentityCredential() configured only by the environment
             (AZURE_AUTHORITY_HOST, AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE)
  assertion  azure.identity.ClientAssertionCredential with a callback reading AZURE_FEDERATED_TOKEN_FILE
  workload-proxy
             WorkloadIdentityCredential(enable_azure_proxy=True): AKS identity bindings, the token
             request sent through AZURE_KUBERNETES_TOKEN_PROXY (SNI AZURE_KUBERNETES_SNI_NAME, CA
             AZURE_KUBERNETES_CA_FILE or AZURE_KUBERNETES_CA_DATA)
  msal-cca   msal.ConfidentialClientApplication with {"client_assertion": <token file>},
             instance_discovery=False (msal does OIDC discovery against the authority)

Output: {"ok": true, "token": "...", "expires_on": N} or
        {"ok": false, "error": "...", "codes": [AADSTS numbers found in the error]}.
TLS trust comes from REQUESTS_CA_BUNDLE, as for any requests-based client.
"""
import json
import os
import re
import sys
import time


def env(name):
    value = os.environ.get(name)
    if not value:
        raise SystemExit(json.dumps({"ok": False, "error": f"{name} is not set", "codes": []}))
    return value


def read_token_file():
    with open(env("AZURE_FEDERATED_TOKEN_FILE"), encoding="utf-8") as f:
        return f.read()


def workload(scope):
    from azure.identity import WorkloadIdentityCredential

    token = WorkloadIdentityCredential().get_token(scope)
    return {"token": token.token, "expires_on": token.expires_on}


def workload_proxy(scope):
    from azure.identity import WorkloadIdentityCredential

    token = WorkloadIdentityCredential(enable_azure_proxy=True).get_token(scope)
    return {"token": token.token, "expires_on": token.expires_on}


def assertion(scope):
    from azure.identity import ClientAssertionCredential

    credential = ClientAssertionCredential(
        tenant_id=env("AZURE_TENANT_ID"),
        client_id=env("AZURE_CLIENT_ID"),
        func=read_token_file,
        authority=env("AZURE_AUTHORITY_HOST"),
    )
    token = credential.get_token(scope)
    return {"token": token.token, "expires_on": token.expires_on}


def msal_cca(scope):
    import msal

    authority = env("AZURE_AUTHORITY_HOST").rstrip("/") + "/" + env("AZURE_TENANT_ID")
    app = msal.ConfidentialClientApplication(
        env("AZURE_CLIENT_ID"),
        authority=authority,
        client_credential={"client_assertion": read_token_file},  # a callable: re-read per request
        instance_discovery=False,
    )
    result = app.acquire_token_for_client(scopes=[scope])
    if "access_token" not in result:
        codes = result.get("error_codes") or []
        raise SdkError(f"{result.get('error')}: {result.get('error_description')}", codes)
    return {"token": result["access_token"], "expires_on": int(time.time()) + int(result.get("expires_in", 0))}


class SdkError(Exception):
    def __init__(self, message, codes):
        super().__init__(message)
        self.codes = codes


MODES = {
    "workload": workload,
    "workload-proxy": workload_proxy,
    "assertion": assertion,
    "msal-cca": msal_cca,
}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in MODES:
        print(json.dumps({"ok": False, "error": f"usage: py_client.py {{{','.join(MODES)}}} [SCOPE]", "codes": []}))
        return 2
    scope = sys.argv[2] if len(sys.argv) > 2 else "https://management.azure.com/.default"
    try:
        out = {"ok": True, **MODES[sys.argv[1]](scope)}
    except Exception as e:  # report every SDK failure as data for the Rust test
        message = f"{type(e).__name__}: {e}"
        codes = getattr(e, "codes", None) or sorted({int(c) for c in re.findall(r"AADSTS(\d+)", message)})
        out = {"ok": False, "error": message, "codes": codes}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
