#!/usr/bin/env python3
"""Renders the webhook's kustomizations (manifests/webhook: cert-manager; static-certs: the
certificates from `identity-sidecar-webhook certs`), validates the core kinds offline with
kubernetes-validate --strict (1.29 and the newest schema it ships; cert-manager's kinds are
checked here instead), and checks the rules of issue 13 on the output.

usage: check_webhook.py KUBERNETES_VALIDATE_BIN WEBHOOK_DIR
WEBHOOK_DIR is a copy of manifests/webhook whose static-certs/ holds generated certificates.
Prints one line per kustomization and "N passed, N failed"; exit 1 on any failure.
"""
import os
import sys

import yaml

from manifest_checks import check, kustomize, report, validate_strict

NS = "identity-sidecar-system"
NAME = "identity-sidecar-webhook"
CERT_MANAGER_KINDS = {"Certificate", "Issuer"}


def render(d):
    return [x for x in yaml.safe_load_all(kustomize(d)) if x]


def validate(validator, docs):
    """The core kinds, strictly; cert-manager's kinds have no schema there and are checked below."""
    core = [d for d in docs if d["kind"] not in CERT_MANAGER_KINDS]
    validate_strict(validator, yaml.safe_dump_all(core), ["1.29.0", "1.37.0"])


def one(docs, kind, name=NAME):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    check(len(found) == 1, f"expected one {kind}/{name}, got {len(found)}")
    return found[0]


def check_common(docs):
    dep = one(docs, "Deployment")
    check(dep["metadata"]["namespace"] == NS, "Deployment namespace")
    check(dep["spec"]["replicas"] >= 2, "Deployment needs 2 replicas")
    pod = dep["spec"]["template"]["spec"]
    check(pod["securityContext"].get("runAsNonRoot") is True, "pod runAsNonRoot")
    (c,) = pod["containers"]
    sc = c["securityContext"]
    check(sc.get("runAsNonRoot") is True and sc.get("readOnlyRootFilesystem") is True, "container non-root, read-only root")
    check(sc.get("allowPrivilegeEscalation") is False and sc["capabilities"]["drop"] == ["ALL"], "no privileges")
    for k in ("requests", "limits"):
        for r in ("cpu", "memory"):
            check(r in c["resources"][k], f"resources.{k}.{r}")
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness on /readyz")
    check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness on /healthz")
    check(c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS", "probes over HTTPS")
    env = {e["name"] for e in c.get("env", [])}
    for v in ("IDENTITY_SIDECAR_WEBHOOK_TLS_CERT_FILE", "IDENTITY_SIDECAR_WEBHOOK_TLS_KEY_FILE", "IDENTITY_SIDECAR_WEBHOOK_IMAGE"):
        check(v in env, f"webhook env {v}")
    secret = [v for v in pod["volumes"] if "secret" in v]
    check(secret and secret[0]["secret"]["secretName"] == f"{NAME}-tls", "TLS Secret volume")

    pdb = one(docs, "PodDisruptionBudget")
    check(pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"], "PDB selects the webhook")
    svc = one(docs, "Service")
    check(svc["spec"]["ports"][0]["port"] == 443, "Service port 443")

    # Only the webhook's own traffic: in on its port; out to the API server and DNS.
    netpol = one(docs, "NetworkPolicy")
    check(netpol["metadata"]["namespace"] == NS, "NetworkPolicy namespace")
    check(netpol["spec"]["podSelector"] == dep["spec"]["selector"], "NetworkPolicy selects the webhook's pods")
    check(sorted(netpol["spec"]["policyTypes"]) == ["Egress", "Ingress"], "NetworkPolicy restricts both directions")
    port = c["ports"][0]["containerPort"]
    check(netpol["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": port}]}],
          f"ingress only on the webhook's port {port}, got {netpol['spec']['ingress']}")
    out_ports = sorted((p["protocol"], p["port"]) for rule in netpol["spec"]["egress"] for p in rule["ports"])
    check(out_ports == [("TCP", 53), ("TCP", 443), ("TCP", 6443), ("UDP", 53)],
          f"egress only to the API server (443/6443) and DNS (53), got {out_ports}")
    dns = [r for r in netpol["spec"]["egress"] if any(p["port"] == 53 for p in r["ports"])]
    check(len(dns) == 1 and dns[0].get("to") == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}], "DNS only to kube-system's kube-dns")

    role = one(docs, "ClusterRole")
    check(role["rules"] == [{"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]}],
          f"RBAC must be get serviceaccounts only, got {role['rules']}")
    binding = one(docs, "ClusterRoleBinding")
    check(binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": NS}], "binding subject")

    mwc = one(docs, "MutatingWebhookConfiguration")
    (w,) = mwc["webhooks"]
    check(w["objectSelector"] == {"matchLabels": {"identity-sidecar.io/inject": "true"}}, "objectSelector on the label")
    check(w["failurePolicy"] == "Fail", "failurePolicy Fail")
    check(w["reinvocationPolicy"] == "IfNeeded", "reinvocationPolicy IfNeeded")
    check(w["sideEffects"] == "None", "sideEffects None")
    check(w["timeoutSeconds"] <= 5, "timeoutSeconds <= 5")
    excluded = [e for e in w["namespaceSelector"]["matchExpressions"]
                if e["key"] == "kubernetes.io/metadata.name" and e["operator"] == "NotIn"]
    check(excluded and {"kube-system", NS} <= set(excluded[0]["values"]), "kube-system and own namespace excluded")
    check(w["clientConfig"]["service"] == {"name": NAME, "namespace": NS, "path": "/mutate", "port": 443}, "clientConfig.service")
    check(w["rules"][0]["operations"] == ["CREATE"] and w["rules"][0]["resources"] == ["pods"], "rules: pod CREATE")
    return mwc


def check_cert_manager(docs):
    mwc = check_common(docs)
    ann = mwc["metadata"].get("annotations", {})
    check(ann.get("cert-manager.io/inject-ca-from") == f"{NS}/{NAME}", "cert-manager.io/inject-ca-from")
    cert = one(docs, "Certificate")
    check(cert["spec"]["secretName"] == f"{NAME}-tls", "Certificate writes the mounted Secret")
    check(f"{NAME}.{NS}.svc" in cert["spec"]["dnsNames"], "Certificate names the Service")
    issuer = cert["spec"]["issuerRef"]["name"]
    check(any(d["kind"] == "Issuer" and d["metadata"]["name"] == issuer for d in docs), "Issuer present")


def check_static(docs):
    mwc = check_common(docs)
    check(mwc["webhooks"][0]["clientConfig"].get("caBundle"), "caBundle set")
    sec = one(docs, "Secret", f"{NAME}-tls")
    check(sec["type"] == "kubernetes.io/tls" and {"tls.crt", "tls.key"} <= set(sec["data"]), "TLS Secret")
    check(not any(d["kind"] in CERT_MANAGER_KINDS for d in docs), "no cert-manager kinds without cert-manager")


def check_kustomization(validator, d, rules):
    docs = render(d)
    validate(validator, docs)
    rules(docs)


def main():
    validator, webhook = sys.argv[1], sys.argv[2]
    return report("webhook manifests", [
        ("cert-manager", lambda: check_kustomization(validator, webhook, check_cert_manager)),
        ("static-certs",
         lambda: check_kustomization(validator, os.path.join(webhook, "static-certs"), check_static)),
    ])


if __name__ == "__main__":
    sys.exit(main())
