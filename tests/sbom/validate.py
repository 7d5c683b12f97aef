"""Validates CycloneDX 1.5 JSON SBOMs against the vendored schema (tests/sbom/schema), offline.

Usage: validate.py SBOM.json...   Exit 0 when every file is valid; otherwise prints each
violation (JSON path and message) and exits 1. Run by tests/artifacts.rs with the Python of the
venv scripts/install-sbom-tools makes (jsonschema + referencing, pinned).
"""
import json
import os
import sys

import jsonschema
from referencing import Registry, Resource

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMAS = os.path.join(HERE, "schema")


def registry():
    """Every vendored schema under its $id, so cross-file $refs resolve without the network."""
    resources = []
    for name in sorted(os.listdir(SCHEMAS)):
        if name.endswith(".schema.json"):
            with open(os.path.join(SCHEMAS, name), encoding="utf-8") as f:
                doc = json.load(f)
            resources.append((doc["$id"], Resource.from_contents(doc)))
    return Registry().with_resources(resources)


def main(paths):
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(os.path.join(SCHEMAS, "bom-1.5.schema.json"), encoding="utf-8") as f:
        schema = json.load(f)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema, registry=registry(), format_checker=cls.FORMAT_CHECKER)
    bad = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        if doc.get("specVersion") != "1.5":
            print(f"{path}: specVersion {doc.get('specVersion')!r}, want '1.5'")
            bad += 1
            continue
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        for e in errors:
            where = "/".join(str(p) for p in e.absolute_path) or "(root)"
            print(f"{path}: {where}: {e.message[:300]}")
        if errors:
            bad += 1
        else:
            print(f"{path}: valid CycloneDX 1.5 ({len(doc.get('components', []))} components)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
