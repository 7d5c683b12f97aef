"""What the manifest checks (check.py, check_webhook.py) share: a broken rule (`Fail`, `check`),
rendering with `kubectl kustomize`, kubernetes-validate --strict on the rendered YAML, and the
report: one ok/FAIL line per name and a closing "N passed, N failed" line."""
import os
import subprocess
import tempfile


class Fail(Exception):
    """A rule the rendered manifests break."""


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def kustomize(directory):
    """The YAML `kubectl kustomize DIRECTORY` renders."""
    out = subprocess.run(["kubectl", "kustomize", directory], capture_output=True, text=True)
    check(out.returncode == 0, f"kubectl kustomize {directory}: {out.stderr.strip()}")
    return out.stdout


def validate_strict(validator, yaml_text, versions):
    """kubernetes-validate --strict against each Kubernetes version in `versions`."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(yaml_text)
        path = f.name
    try:
        for v in versions:
            out = subprocess.run([validator, "--strict", "--quiet", "-k", v, path],
                                 capture_output=True, text=True)
            check(out.returncode == 0,
                  f"kubernetes-validate --strict -k {v}: {(out.stdout + out.stderr).strip()}")
    finally:
        os.unlink(path)


def report(title, cases, failed=0):
    """Runs each (name, run) of `cases`, printing ok or FAIL with the broken rule, then
    "TITLE: N passed, N failed" (`failed` counts failures found before); returns the exit code."""
    passed = 0
    for name, run in cases:
        try:
            run()
            print(f"ok   {name}")
            passed += 1
        except Fail as e:
            print(f"FAIL {name}: {e}")
            failed += 1
    print(f"{title}: {passed} passed, {failed} failed")
    return 1 if failed else 0
