#!/usr/bin/env python3
"""Renders manifests/node (the node agent's DaemonSet, RBAC and namespace), validates it offline
with kubernetes-validate --strict (1.29 and 1.37), and checks the rules of issue 20 on the output:
RBAC limited to get/list/watch on pods and serviceaccounts; a namespace at Pod Security
"privileged"; the DaemonSet with hostPID and hostNetwork, every capability dropped but the
five it needs, the kubelet's pods directory read-only with HostToContainer propagation,
system-node-critical, a toleration for every taint, NODE_NAME from the downward API, requests,
limits and both probes.

usage: check_node.py KUBERNETES_VALIDATE_BIN MANIFESTS_NODE_DIR
Prints one line per check group and "N passed, N failed"; exit 1 on any failure.
"""
import os
import subprocess
import sys
import tempfile

import yaml

NAME = "identity-sidecar-node"
CAPS = {"SYS_ADMIN", "NET_ADMIN", "NET_BIND_SERVICE", "SYS_PTRACE", "DAC_READ_SEARCH"}


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def one(docs, kind):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == NAME]
    check(len(found) == 1, f"expected one {kind}/{NAME}, got {len(found)}")
    return found[0]


def rendered(d):
    out = subprocess.run(["kubectl", "kustomize", d], capture_output=True, text=True)
    check(out.returncode == 0, f"kubectl kustomize {d}: {out.stderr.strip()}")
    return [x for x in yaml.safe_load_all(out.stdout) if x]


def validated(validator, docs):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(docs, f)
        path = f.name
    try:
        for v in ["1.29.0", "1.37.0"]:
            r = subprocess.run([validator, "--strict", "--quiet", "-k", v, path], capture_output=True, text=True)
            check(r.returncode == 0, f"kubernetes-validate --strict -k {v}: {(r.stdout + r.stderr).strip()}")
    finally:
        os.unlink(path)


def rbac(docs):
    role = one(docs, "ClusterRole")
    rules = role["rules"]
    check(len(rules) == 1, f"one rule expected: {rules}")
    r = rules[0]
    check(r["apiGroups"] == [""], f"core group only: {r}")
    check(sorted(r["resources"]) == ["pods", "serviceaccounts"], f"resources: {r}")
    check(sorted(r["verbs"]) == ["get", "list", "watch"], f"verbs: {r}")
    binding = one(docs, "ClusterRoleBinding")
    check(binding["roleRef"]["name"] == NAME, "binding names the role")
    sa = binding["subjects"][0]
    check((sa["name"], sa["namespace"]) == (NAME, NAME), "binding names the agent's ServiceAccount")


def namespace(docs):
    ns = one(docs, "Namespace")
    check(ns["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "privileged",
          "namespace must enforce Pod Security 'privileged'")


def daemonset(docs):
    ds = one(docs, "DaemonSet")
    check(ds["metadata"]["namespace"] == NAME, "DaemonSet namespace")
    spec = ds["spec"]["template"]["spec"]
    check(spec.get("hostPID") is True, "hostPID")
    check(spec.get("hostNetwork") is True, "hostNetwork")
    check(spec.get("priorityClassName") == "system-node-critical", "priority class")
    check({"operator": "Exists"} in spec.get("tolerations", []), "a toleration for every taint")
    check(spec.get("serviceAccountName") == NAME, "ServiceAccount")
    [c] = spec["containers"]
    sc = c["securityContext"]
    check(sc.get("privileged") is False and sc.get("allowPrivilegeEscalation") is False, "not privileged")
    check(sc.get("readOnlyRootFilesystem") is True, "read-only root")
    check(sc["capabilities"]["drop"] == ["ALL"], "drop ALL")
    check(set(sc["capabilities"]["add"]) == CAPS, f"capabilities: {sc['capabilities']['add']}")
    env = {e["name"]: e for e in c.get("env", [])}
    check(env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName", "NODE_NAME")
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    [kubelet] = [m for m in mounts.values() if vols[m["name"]].get("hostPath")]
    check(kubelet.get("readOnly") is True, "kubelet directory read-only")
    check(kubelet.get("mountPropagation") == "HostToContainer", "HostToContainer")
    check(vols[kubelet["name"]]["hostPath"]["path"] == "/var/lib/kubelet/pods", "kubelet pods dir")
    res = c["resources"]
    check(res["requests"].get("cpu") and res["requests"].get("memory"), "requests")
    check(res["limits"].get("memory"), "memory limit")
    check(c.get("readinessProbe") and c.get("livenessProbe"), "probes")


def main():
    validator, d = sys.argv[1], sys.argv[2]
    passed = failed = 0
    try:
        docs = rendered(d)
    except Fail as e:
        print(f"FAIL render: {e}")
        print("0 passed, 1 failed")
        return 1
    for name, fn in [("validate", lambda: validated(validator, docs)), ("rbac", lambda: rbac(docs)),
                     ("namespace", lambda: namespace(docs)), ("daemonset", lambda: daemonset(docs))]:
        try:
            fn()
            print(f"ok   {name}")
            passed += 1
        except Fail as e:
            print(f"FAIL {name}: {e}")
            failed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
