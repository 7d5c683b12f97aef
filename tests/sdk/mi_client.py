"""Managed-identity client for the SDK tests: runs a real, unmodified Python SDK against whatever
endpoint the environment names, and prints one JSON line.

usage: mi_client.py azure-identity|msal RESOURCE [CLIENT_ID]
The flavor (IMDS, App Service 2019, 2017) is chosen by the SDK itself from the environment:
AZURE_POD_IDENTITY_AUTHORITY_HOST, IDENTITY_ENDPOINT+IDENTITY_HEADER, or MSI_ENDPOINT+MSI_SECRET.
"""
import json
import sys


def main() -> None:
    lib, resource = sys.argv[1], sys.argv[2]
    client_id = sys.argv[3] if len(sys.argv) > 3 else None
    try:
        if lib == "azure-identity":
            from azure.identity import ManagedIdentityCredential

            cred = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
            tok = cred.get_token(resource + "/.default")
            out = {"ok": True, "token": tok.token, "expires_on": tok.expires_on}
        elif lib == "msal":
            import msal
            import requests

            identity = (
                msal.UserAssignedManagedIdentity(client_id=client_id)
                if client_id
                else msal.SystemAssignedManagedIdentity()
            )
            app = msal.ManagedIdentityClient(identity, http_client=requests.Session())
            res = app.acquire_token_for_client(resource=resource)
            if "access_token" in res:
                out = {"ok": True, "token": res["access_token"], "expires_in": res.get("expires_in")}
            else:
                out = {"ok": False, "error": json.dumps(res)}
        else:
            out = {"ok": False, "error": "unknown library " + lib}
    except Exception as e:  # the test inspects the message
        out = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(out))


main()
