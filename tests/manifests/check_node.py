#!/usr/bin/env python3
"""Renders manifests/node (the node agent's DaemonSet, RBAC and namespace), validates it offline
with kubernetes-validate --strict (1.29 and 1.37), and checks the rules of issue 20 on the output:
RBAC limited to get/list/watch on pods and serviceaccounts; a namespace at Pod Security
"privileged"; the DaemonSet with hostPID and hostNetwork, every capability dropped but the
five it needs, the kubelet's pods directory read-only with HostToContainer propagation,
system-node-critical, a toleration for every taint, NODE_NAME from the downward API, requests,
limits and both probes (httpGet on the named port node-admin, where health and metrics listen
on the node's IP), and the audit line on.

usage: check_node.py KUBERNETES_VALIDATE_BIN MANIFESTS_NODE_DIR
Prints one ok/FAIL line per check and "node manifests: N passed, N failed"; exit 1 on any
failure (tests/manifests/manifest_checks.py).
"""
import sys

import yaml

from manifest_checks import check, kustomize, report, validate_strict

NAME = "identity-sidecar-node"
CAPS = {"SYS_ADMIN", "NET_ADMIN", "NET_BIND_SERVICE", "SYS_PTRACE", "DAC_READ_SEARCH"}


def one(docs, kind):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == NAME]
    check(len(found) == 1, f"expected one {kind}/{NAME}, got {len(found)}")
    return found[0]


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
    # Audit line on; health and metrics on the node's IP at the named port node-admin, which the
    # probes and the PodMonitor use.
    check(env.get("IDENTITY_SIDECAR_AUDIT_LOG", {}).get("value") == "true", "audit log on")
    check(env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP", "HOST_IP")
    listen = env["IDENTITY_SIDECAR_HEALTH_LISTEN"]["value"]
    ports = [p for p in c.get("ports", []) if p.get("name") == "node-admin"]
    check(len(ports) == 1 and listen == f"$(HOST_IP):{ports[0]['containerPort']}",
          f"health listen {listen} on the node-admin port {ports}")
    for probe in ("readinessProbe", "livenessProbe"):
        check(c[probe]["httpGet"]["port"] == "node-admin", f"{probe} on node-admin")


def main():
    validator, directory = sys.argv[1], sys.argv[2]
    rendered = {}

    def render_and_validate():
        text = kustomize(directory)
        validate_strict(validator, text, ["1.29.0", "1.37.0"])
        rendered["docs"] = [d for d in yaml.safe_load_all(text) if d]

    def on_docs(fn):
        return lambda: fn(rendered.get("docs", []))

    return report("node manifests", [
        ("render and validate", render_and_validate),
        ("rbac", on_docs(rbac)),
        ("namespace", on_docs(namespace)),
        ("daemonset", on_docs(daemonset)),
    ])


if __name__ == "__main__":
    sys.exit(main())
