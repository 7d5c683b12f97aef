"""Client-release matrix (tests/sdk_legacy.rs): azure-identity's ManagedIdentityCredential, of whatever
release the running venv holds, unmodified, asked twice for the same scope; prints one JSON line.

usage: matrix_client.py RESOURCE [CLIENT_ID]
The SDK picks its flavor from the environment (MSI_ENDPOINT[+MSI_SECRET], IDENTITY_ENDPOINT+IDENTITY_HEADER,
AZURE_POD_IDENTITY_AUTHORITY_HOST). Output:
  {"ok": true, "version": "1.5.0", "token": "...", "expires_on": [first, second]}   (epoch seconds as the SDK computed them)
  {"ok": false, "version": "...", "error": "Type: message"}
Whether the second call came from the SDK's cache is seen by the test on the sidecar's side.
"""
import json
import sys


def main():
    resource = sys.argv[1]
    client_id = sys.argv[2] if len(sys.argv) > 2 else None
    version = "?"
    try:
        from azure.identity import ManagedIdentityCredential
        from azure.identity._version import VERSION as version

        cred = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
        first = cred.get_token(resource + "/.default")
        second = cred.get_token(resource + "/.default")
        out = {"ok": True, "version": version, "token": first.token, "expires_on": [first.expires_on, second.expires_on]}
    except Exception as e:  # the test reads the message
        out = {"ok": False, "version": version, "error": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(out))


main()
