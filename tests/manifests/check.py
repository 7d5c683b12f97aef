#!/usr/bin/env python3
"""Renders every overlay in manifests/overlays with `kubectl kustomize`, validates it offline
with kubernetes-validate --strict against Kubernetes 1.29 and the newest schema it ships (the
legacy-sidecar overlay also against 1.25), and checks the pod-integration rules on the output (httpGet probes on the named admin port).

Usage: check.py KUBERNETES_VALIDATE_BIN   (run by tests/manifests/check.sh)
Prints one line per overlay and a closing "N passed, N failed" line; exit 1 on any failure.
"""
import os
import sys

import yaml

from manifest_checks import check, kustomize, report, validate_strict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERLAYS = os.path.join(REPO, "manifests", "overlays")
SIDECAR = "identity-sidecar"
INIT = "identity-sidecar-init"
TOKEN_PATH = "azure-identity-token"
EXPECTED = {"app-service", "imds-intercept", "azwi-webhook", "job", "legacy-sidecar"}
SIDECAR_UID = 10501
ADMIN_PORT = "identity-admin"
# The Pod Security level each overlay's pods meet (docs/kubernetes.md#pod-security): imds-intercept
# adds NET_ADMIN to an init container running as uid 0, which baseline already forbids.
POD_SECURITY = {"app-service": "restricted", "imds-intercept": "privileged", "azwi-webhook": "restricted",
                "job": "restricted", "legacy-sidecar": "restricted"}
# Capabilities baseline lets a container add (the container runtime's default set).
BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                 "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}


def admin_port(c):
    """The sidecar's admin port: IDENTITY_SIDECAR_ADMIN_LISTEN on the pod IP, declared as the
    named container port the probes and the PodMonitor use."""
    name = c["name"]
    listen = env_value(c, "IDENTITY_SIDECAR_ADMIN_LISTEN")
    check(isinstance(listen, str) and listen.startswith("0.0.0.0:"),
          f"{name}: IDENTITY_SIDECAR_ADMIN_LISTEN must be 0.0.0.0:PORT, got {listen}")
    port = int(listen.rsplit(":", 1)[1])
    ports = [p for p in c.get("ports", []) or [] if p.get("name") == ADMIN_PORT]
    check(len(ports) == 1 and ports[0].get("containerPort") == port,
          f"{name}: must declare port {ADMIN_PORT} = {port}, got {c.get('ports')}")
    return port


def http_probe_path(probe):
    check(probe is not None, "missing probe")
    get = probe.get("httpGet", {})
    check(get.get("port") == ADMIN_PORT and "exec" not in probe,
          f"probe must be httpGet on port {ADMIN_PORT}: {probe}")
    return get.get("path")


def check_sidecar(c, native):
    name = c["name"]
    if native:
        check(c.get("restartPolicy") == "Always", f"{name}: native sidecar needs restartPolicy: Always")
        check(http_probe_path(c.get("startupProbe")) == "/readyz", f"{name}: startupProbe must probe /readyz")
    else:
        check("restartPolicy" not in c, f"{name}: regular container with restartPolicy")
        cmd = c.get("lifecycle", {}).get("postStart", {}).get("exec", {}).get("command", [])
        check(cmd[1:3] == ["probe", "/readyz"] and "--wait" in cmd,
              f"{name}: legacy sidecar needs a postStart start-up wait on /readyz, got {cmd}")
    admin_port(c)
    check(http_probe_path(c.get("readinessProbe")) == "/readyz", f"{name}: readinessProbe must probe /readyz")
    check(http_probe_path(c.get("livenessProbe")) == "/healthz", f"{name}: livenessProbe must probe /healthz")
    check(env_value(c, "IDENTITY_SIDECAR_AUDIT_LOG") == "true", f"{name}: the audit log must be on")
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            check(r in res.get(kind, {}), f"{name}: resources.{kind}.{r} missing")
    sc = c.get("securityContext", {})
    check(sc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot must be true")
    check(sc.get("runAsUser") == SIDECAR_UID, f"{name}: runAsUser must be {SIDECAR_UID} (init-network exempts it)")
    check(sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem must be true")
    check(sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation must be false")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities.drop must be [ALL]")
    check(not sc.get("capabilities", {}).get("add"), f"{name}: sidecar must add no capabilities")
    check(sc.get("privileged") in (None, False), f"{name}: must not be privileged")
    check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccompProfile RuntimeDefault")
    listen = env_value(c, "IDENTITY_SIDECAR_LISTEN")
    check(listen is None or all(a.strip().startswith(("127.", "[::1]", "localhost")) for a in listen.split(",")),
          f"{name}: must listen on loopback only, got {listen}")


def env_value(c, name):
    for e in c.get("env", []) or []:
        if e["name"] == name:
            return e.get("value", e.get("valueFrom"))
    return None


def token_volumes(spec):
    names = set()
    for v in spec.get("volumes", []) or []:
        for s in (v.get("projected") or {}).get("sources", []) or []:
            t = s.get("serviceAccountToken")
            if t:
                check(t.get("audience") == "api://AzureADTokenExchange",
                      f"volume {v['name']}: audience must be api://AzureADTokenExchange")
                check(t.get("expirationSeconds") == 3600, f"volume {v['name']}: expirationSeconds must be 3600")
                names.add(v["name"])
    return names


def check_pod(kind, name, meta, spec, overlay, sas):
    where = f"{kind}/{name}"
    inits = spec.get("initContainers", []) or []
    conts = spec.get("containers", []) or []
    legacy = overlay == "legacy-sidecar"
    pool = conts if legacy else inits
    sidecars = [c for c in pool if c["name"] == SIDECAR]
    check(len(sidecars) == 1, f"{where}: exactly one {SIDECAR} in {'containers' if legacy else 'initContainers'}")
    sidecar = sidecars[0]
    if legacy:
        check(conts[0]["name"] == SIDECAR, f"{where}: legacy sidecar must be the first container")
        check(not any(c["name"] == SIDECAR for c in inits), f"{where}: sidecar also in initContainers")
    check_sidecar(sidecar, native=not legacy)
    others = [c for c in inits + conts if c["name"] != SIDECAR]
    apps = [c for c in conts if c["name"] != SIDECAR]
    check(apps, f"{where}: no app container")

    # The federated token: a projected volume mounted only into the sidecar.
    vols = token_volumes(spec)
    if overlay == "azwi-webhook":
        labels = meta.get("labels", {})
        ann = meta.get("annotations", {})
        check(labels.get("azure.workload.identity/use") == "true",
              f"{where}: pod template needs label azure.workload.identity/use=true")
        skip = {s.strip() for s in ann.get("azure.workload.identity/skip-containers", "").split(";") if s.strip()}
        missing = {c["name"] for c in others} - skip
        check(not missing, f"{where}: skip-containers must list every non-sidecar container, missing {sorted(missing)}")
        check(SIDECAR not in skip, f"{where}: the sidecar must not be skipped")
    else:
        check(len(vols) == 1, f"{where}: expected one projected serviceAccountToken volume, got {sorted(vols)}")
        mounts = [m for m in sidecar.get("volumeMounts", []) or [] if m["name"] in vols]
        check(mounts, f"{where}: token volume not mounted into the sidecar")
        token_file = env_value(sidecar, "AZURE_FEDERATED_TOKEN_FILE")
        check(token_file and token_file.startswith(mounts[0]["mountPath"].rstrip("/") + "/"),
              f"{where}: sidecar AZURE_FEDERATED_TOKEN_FILE {token_file} not under its token mount")
    for c in others:
        check(not any(m["name"] in vols for m in c.get("volumeMounts", []) or []),
              f"{where}: container {c['name']} mounts the federated token")
        check(env_value(c, "AZURE_FEDERATED_TOKEN_FILE") is None,
              f"{where}: container {c['name']} has AZURE_FEDERATED_TOKEN_FILE (SDKs would bypass the sidecar)")
    for c in apps:
        sc = c.get("securityContext", {}) or {}
        check(sc.get("runAsNonRoot") is True and sc.get("allowPrivilegeEscalation") is False
              and sc.get("capabilities", {}).get("drop") == ["ALL"]
              and sc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
              f"{where}: app {c['name']} needs a restricted securityContext (runAsNonRoot, "
              f"allowPrivilegeEscalation false, drop ALL, seccomp RuntimeDefault), got {sc}")
        check(env_value(c, "IDENTITY_ENDPOINT") == "http://127.0.0.1:8000/msi/token",
              f"{where}: app {c['name']} needs IDENTITY_ENDPOINT")
        hdr = env_value(c, "IDENTITY_HEADER")
        check(isinstance(hdr, dict) and "secretKeyRef" in hdr,
              f"{where}: app {c['name']} needs IDENTITY_HEADER from a Secret")
        # Legacy releases (README "Client releases"): 2017-09-01 with the same secret, and IMDS.
        check(env_value(c, "MSI_ENDPOINT") == "http://127.0.0.1:8000/msi/token",
              f"{where}: app {c['name']} needs MSI_ENDPOINT (azure-identity 1.5, @azure/identity 1.x)")
        check(env_value(c, "MSI_SECRET") == hdr,
              f"{where}: app {c['name']} needs MSI_SECRET from the same Secret as IDENTITY_HEADER")
        check(env_value(c, "AZURE_POD_IDENTITY_AUTHORITY_HOST") == "http://127.0.0.1:8000",
              f"{where}: app {c['name']} needs AZURE_POD_IDENTITY_AUTHORITY_HOST")

    # Privileges: only imds-intercept has an init container with NET_ADMIN, and nothing else.
    init_net = [c for c in inits if c["name"] == INIT]
    if overlay == "imds-intercept":
        check(len(init_net) == 1, f"{where}: imds-intercept needs the {INIT} init container")
        c = init_net[0]
        check(inits.index(c) < inits.index(sidecar), f"{where}: {INIT} must run before the sidecar")
        sc = c.get("securityContext", {})
        check(sc.get("capabilities", {}).get("add") == ["NET_ADMIN"], f"{where}: {INIT} must add NET_ADMIN only")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: {INIT} must drop ALL")
        check(sc.get("privileged") in (None, False), f"{where}: {INIT} must not be privileged")
        check(sc.get("allowPrivilegeEscalation") is False, f"{where}: {INIT} allowPrivilegeEscalation false")
    else:
        check(not init_net, f"{where}: {INIT} only belongs in imds-intercept")
    for c in inits + conts:
        if overlay == "imds-intercept" and c["name"] == INIT:
            continue
        sc = c.get("securityContext", {}) or {}
        check(not sc.get("capabilities", {}).get("add"), f"{where}: {c['name']} adds capabilities")
        check(not sc.get("privileged"), f"{where}: {c['name']} is privileged")

    sa = spec.get("serviceAccountName")
    check(sa in sas, f"{where}: serviceAccountName {sa} is not a ServiceAccount of this overlay")
    check(sas[sa].get("azure.workload.identity/client-id"),
          f"ServiceAccount {sa}: needs the azure.workload.identity/client-id annotation")
    if kind == "Job":
        check(spec.get("restartPolicy") in ("Never", "OnFailure"), f"{where}: Job restartPolicy")


def pod_security_problems(spec):
    """What keeps a pod spec from Pod Security "baseline" and from "restricted" (the container
    and pod rules of https://kubernetes.io/docs/concepts/security/pod-security-standards/ that
    these manifests can touch), as two lists of reasons."""
    baseline, restricted = [], []
    pod_sc = spec.get("securityContext", {}) or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            baseline.append(flag)
    for v in spec.get("volumes", []) or []:
        kinds = set(v) - {"name"}
        if "hostPath" in kinds:
            baseline.append(f"volume {v['name']}: hostPath")
        if not kinds <= RESTRICTED_VOLUMES:
            restricted.append(f"volume {v['name']}: {sorted(kinds)}")
    for c in (spec.get("initContainers", []) or []) + (spec.get("containers", []) or []):
        name = c["name"]
        sc = c.get("securityContext", {}) or {}
        caps = sc.get("capabilities", {}) or {}
        added = set(caps.get("add", []) or [])
        merged = lambda key: sc.get(key, pod_sc.get(key))
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if sc.get("privileged"):
            baseline.append(f"{name}: privileged")
        if not added <= BASELINE_CAPS:
            baseline.append(f"{name}: adds {sorted(added - BASELINE_CAPS)}")
        if seccomp == "Unconfined":
            baseline.append(f"{name}: seccomp Unconfined")
        if any(p.get("hostPort") for p in c.get("ports", []) or []):
            baseline.append(f"{name}: hostPort")
        if sc.get("allowPrivilegeEscalation") is not False:
            restricted.append(f"{name}: allowPrivilegeEscalation is not false")
        if "ALL" not in (caps.get("drop") or []):
            restricted.append(f"{name}: does not drop ALL capabilities")
        if not added <= {"NET_BIND_SERVICE"}:
            restricted.append(f"{name}: adds {sorted(added)}")
        if merged("runAsNonRoot") is not True:
            restricted.append(f"{name}: runAsNonRoot is not true")
        if merged("runAsUser") == 0:
            restricted.append(f"{name}: runs as uid 0")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            restricted.append(f"{name}: seccompProfile is {seccomp}, not RuntimeDefault")
    return baseline, restricted


def check_pod_security(where, spec, overlay):
    baseline, restricted = pod_security_problems(spec)
    level = "privileged" if baseline else "baseline" if restricted else "restricted"
    want = POD_SECURITY[overlay]
    check(level == want, f"{where}: meets Pod Security {level!r}, docs/kubernetes.md says {want!r}: "
          f"{'; '.join(baseline + restricted) or 'no violation'}")
    if overlay == "imds-intercept":
        # Only the init container may be what needs more than restricted.
        others = [r for r in baseline + restricted if not r.startswith(INIT + ":")]
        check(not others, f"{where}: besides {INIT}: {'; '.join(others)}")


def check_overlay(overlay_dir, validator):
    overlay = os.path.basename(overlay_dir)
    text = kustomize(overlay_dir)
    versions = ["1.29.0", "1.37.0"] + (["1.25.0"] if overlay == "legacy-sidecar" else [])
    validate_strict(validator, text, versions)
    docs = [d for d in yaml.safe_load_all(text) if d]
    sas = {d["metadata"]["name"]: d["metadata"].get("annotations", {}) for d in docs if d["kind"] == "ServiceAccount"}
    workloads = [d for d in docs if d["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet")]
    check(workloads, "no workload rendered")
    if overlay == "job":
        check([d["kind"] for d in workloads] == ["Job"], "job overlay must render exactly one Job")
    for w in workloads:
        t = w["spec"]["template"]
        check_pod(w["kind"], w["metadata"]["name"], t.get("metadata", {}), t["spec"], overlay, sas)
        check_pod_security(f"{w['kind']}/{w['metadata']['name']}", t["spec"], overlay)


def main():
    validator = sys.argv[1]
    found = sorted(os.listdir(OVERLAYS))
    missing = EXPECTED - set(found)
    if missing:
        print(f"FAIL overlays missing: {sorted(missing)}")
    cases = [(name, lambda d=os.path.join(OVERLAYS, name): check_overlay(d, validator)) for name in found]
    return report("manifests", cases, failed=1 if missing else 0)


if __name__ == "__main__":
    sys.exit(main())
