#!/usr/bin/env python3
"""Regenerate the cell-field parts of ``schemas/manifest.schema.json`` from ``schemas/cell_fields.yaml``.

The manifest's JSON Schema has hand-written parts (dataset id, title, licence, access,
counts, genes, qc, …) and parts that the cell-field contract decides: the organism enum,
the ``obs`` properties (one per standard and optional field), which ``obs`` fields every
manifest needs, and one rule per organism that requires more fields there. This script
rewrites exactly those parts in place; the pydantic model (:mod:`aivc.ingest.manifest`)
reads the same contract, and ``tests/schemas/test_contract.py`` fails when the committed
schema is not what this script writes.

Usage::

    python schemas/build_manifest_schema.py [--check]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCHEMA = HERE / "manifest.schema.json"


def _contract():  # noqa: ANN202 - aivc.schemas.contract.Contract
    try:
        from aivc.schemas.contract import contract
    except ImportError:  # run from a checkout without the package installed
        sys.path.insert(0, str(HERE.parent))
        from schemas.contract import contract  # type: ignore[no-redef]
    return contract()


def _obs_description(c: Any) -> str:
    always = [f"{f.name} {json.dumps(f.default)}" for f in c.fields if f.default is not None]
    per = [f"{f.name} {json.dumps(v)} for {c.organisms[o]['common']}" for f in c.fields for o, v in f.default_for.items()]
    return ("Where each standard cell field comes from. Defaults: " + ", ".join(always) + ("; " + ", ".join(per) if per else "") + ".").replace('"', "'")


def generate(schema: dict[str, Any], c: Any) -> dict[str, Any]:
    """``schema`` with its contract-derived parts rebuilt from ``c``."""
    out = copy.deepcopy(schema)
    props = out["properties"]
    props["organism"] = {
        "enum": list(c.organism_ids),
        "description": " or ".join(o["label"] for o in c.organisms.values()) + ".",
    }
    obs = props["obs"]
    fields = {f.name: {"$ref": "#/$defs/field"} for f in c.fields}
    for name, spec in c.optional.items():
        fields[name] = {"allOf": [{"$ref": "#/$defs/field"}], "required": ["column"], "description": " ".join(str(spec["description"]).split())}
    obs["properties"] = fields
    obs["required"] = list(c.required_always())
    obs["description"] = _obs_description(c)
    # per-organism rules are the contract's: drop the old ones, write one per organism that needs more
    rules = [r for r in out.get("allOf", []) if "organism" not in r.get("if", {}).get("properties", {})]
    for org in c.organism_ids:
        needs = [f for f in c.fields if org in f.required_for]
        if not needs:
            continue
        defaults = [f"{c.organisms[o]['common']} cells default to {v!r}" for f in needs for o, v in f.default_for.items()]
        rules.append(
            {
                "if": {"properties": {"organism": {"const": org}}, "required": ["organism"]},
                "then": {
                    "properties": {"obs": {"required": [f.name for f in needs]}},
                    "description": f"{c.organisms[org]['common']} cells need {', '.join(f.name for f in needs)}" + (f" ({'; '.join(defaults)})" if defaults else ""),
                },
            }
        )
    out["allOf"] = rules
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the committed schema is out of date; write nothing")
    args = ap.parse_args()
    current = SCHEMA.read_text(encoding="utf-8")
    text = render(generate(json.loads(current), _contract()))
    if args.check:
        if text != current:
            print(f"{SCHEMA} is out of date with cell_fields.yaml; run python schemas/build_manifest_schema.py", file=sys.stderr)
            return 1
        return 0
    fd, tmp = tempfile.mkstemp(dir=HERE, prefix=".manifest.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, SCHEMA)
    print(f"wrote {SCHEMA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
