#!/usr/bin/env python3
"""Second opinion on the webhook's patches, with tools we did not write.

For every DIR/*.case.json ({"name", "pod", "patch", "expected"}): applies "patch" to "pod" with
the Python `jsonpatch` package (RFC 6902), checks the result equals "expected" (what the Rust test
got with the `json-patch` crate), and writes it as DIR/NAME.yaml. Then validates every result with
`kubernetes-validate --strict` against Kubernetes 1.29 and the newest schema the tool knows.

usage: validate.py DIR KUBERNETES_VALIDATE_BIN
Prints one line per case and "N passed, N failed"; exit 1 on any failure.
"""
import glob
import json
import os
import subprocess
import sys

import jsonpatch
import yaml

NEWEST = "1.37.0"
VERSIONS = ["1.29.0", NEWEST]


def main():
    d, validator = sys.argv[1], sys.argv[2]
    passed = failed = 0
    outputs = []
    for path in sorted(glob.glob(os.path.join(d, "*.case.json"))):
        with open(path) as f:
            case = json.load(f)
        name = case["name"]
        try:
            got = jsonpatch.apply_patch(case["pod"], case["patch"])
        except Exception as e:  # noqa: BLE001 - report any failure of the standard implementation
            print(f"FAIL {name}: jsonpatch cannot apply the patch: {e}")
            failed += 1
            continue
        if got != case["expected"]:
            print(f"FAIL {name}: jsonpatch and json-patch disagree")
            failed += 1
            continue
        out = os.path.join(d, name + ".yaml")
        with open(out, "w") as f:
            yaml.safe_dump(got, f, sort_keys=False)
        outputs.append((name, out))
    for name, out in outputs:
        ok = True
        for v in VERSIONS:
            r = subprocess.run([validator, "--strict", "--quiet", "-k", v, out],
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(f"FAIL {name}: kubernetes-validate --strict -k {v}: {(r.stdout + r.stderr).strip()}")
                ok = False
                break
        if ok:
            print(f"ok   {name}")
            passed += 1
        else:
            failed += 1
    print(f"webhook corpus: {passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
