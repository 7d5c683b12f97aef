#!/usr/bin/env python3
"""The real azure-identity ManagedIdentityCredential, run in the pod namespace with an empty
environment (no IDENTITY_ENDPOINT, MSI_ENDPOINT, AZURE_*): it can only find IMDS at
169.254.169.254. Prints the access token on success."""
import os
import sys

leaked = [k for k in os.environ if k.startswith(("IDENTITY_", "MSI_", "AZURE_", "IMDS_"))]
if leaked:
    print(f"environment not clean: {leaked}", file=sys.stderr)
    sys.exit(3)

from azure.identity import ManagedIdentityCredential  # noqa: E402

token = ManagedIdentityCredential().get_token("https://management.azure.com/.default")
print(token.token)
