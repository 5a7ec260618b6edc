"""The API reference, docs/api.md, generated from the CRDs that the models generate:
`python -m rackscale.api.docs > docs/api.md`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

from rackscale.api.common import GROUP, VERSION
from rackscale.api.crd import definitions
from rackscale.api.environment import ENVIRONMENT, MULTI_NODE_NVLINK_ENV, ROLE_ENVIRONMENT

HEADER = f"""# API reference: `{GROUP}/{VERSION}`

Generated from the pydantic models in `operator/rackscale/api/` by
`python -m rackscale.api.docs > docs/api.md` (`make docs`); do not edit by hand. A test fails when
this file and the models disagree. The same models generate the CRDs in `crds/`, so every rule
below is enforced by the API server when an object is created or updated.

Field paths use dots for objects and `[]` for list items. **Required** fields must be present;
a default applies when a field is left out. *Validation* lists what the API server checks: ranges,
patterns, allowed values and CEL rules (with the message a person sees when a rule fails).
"""


def _cell(text: Any) -> str:
    """Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _type(schema: dict[str, Any]) -> str:
    kind = str(schema.get("type") or "any")
    if kind == "array":
        return f"[]{_type(schema.get('items') or {})}"
    if kind == "object" and "additionalProperties" in schema:
        return f"map[string]{_type(schema['additionalProperties'])}"
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return "object (free-form)"
    if schema.get("format"):
        return f"{kind} ({schema['format']})"
    return kind


def _validation(schema: dict[str, Any]) -> str:
    rules = []
    if "enum" in schema:
        rules.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    if "minimum" in schema:
        op = ">" if schema.get("exclusiveMinimum") else ">="
        rules.append(f"{op} {schema['minimum']}")
    if "maximum" in schema:
        op = "<" if schema.get("exclusiveMaximum") else "<="
        rules.append(f"{op} {schema['maximum']}")
    for key, word in (
        ("minLength", "length >="),
        ("maxLength", "length <="),
        ("minItems", "items >="),
        ("maxItems", "items <="),
        ("minProperties", "keys >="),
        ("maxProperties", "keys <="),
    ):
        if key in schema:
            rules.append(f"{word} {schema[key]}")
    if "pattern" in schema:
        rules.append(f"matches `{schema['pattern']}`")
    for rule in schema.get("x-kubernetes-validations") or []:
        text = f"CEL `{rule['rule']}`"
        if rule.get("message"):
            text += f": {rule['message']}"
        rules.append(text)
    return "; ".join(rules)


def _default(schema: dict[str, Any]) -> str:
    if "default" not in schema:
        return ""
    return f"`{json.dumps(schema['default'], separators=(', ', ': '))}`"


def _rows(
    schema: dict[str, Any], path: str, required: bool
) -> Iterator[tuple[str, str, str, str, str]]:
    """(field, type, default, validation, description) for this field and every field below."""
    name = f"`{path}`" + (" **required**" if required else "")
    if schema.get("nullable"):
        name += " (nullable)"
    yield (
        name,
        _type(schema),
        _default(schema),
        _validation(schema),
        str(schema.get("description") or ""),
    )
    children: dict[str, Any] = schema.get("properties") or {}
    needed = set(schema.get("required") or [])
    for child, sub in children.items():
        yield from _rows(sub, f"{path}.{child}", child in needed)
    items = schema.get("items")
    if isinstance(items, dict) and items.get("properties"):
        needed = set(items.get("required") or [])
        for child, sub in items["properties"].items():
            yield from _rows(sub, f"{path}[].{child}", child in needed)


def _table(schema: dict[str, Any], root: str) -> list[str]:
    lines = [
        "| field | type | default | validation | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in _rows(schema, root, False):
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return lines


def render() -> str:
    """The whole reference, both resources, spec then status."""
    out = [HEADER.rstrip("\n")]
    for crd in sorted(
        definitions().values(), key=lambda c: c["spec"]["names"]["kind"] != "RackPool"
    ):
        spec = crd["spec"]
        names = spec["names"]
        version = spec["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]
        out += [
            "",
            f"## {names['kind']}",
            "",
            f"`apiVersion: {GROUP}/{version['name']}`, `kind: {names['kind']}`; "
            f"{spec['scope'].lower()}-scoped; plural `{names['plural']}`, short name "
            f"`{names['shortNames'][0]}` (`kubectl get {names['shortNames'][0]}`).",
            "",
        ]
        for rule in schema.get("x-kubernetes-validations") or []:
            out.append(f"Object rule: {rule['message']}.")
            out.append("")
        columns = ", ".join(
            f"{c['name'].upper()} (`{c['jsonPath']}`)" for c in version["additionalPrinterColumns"]
        )
        out += [f"`kubectl get` columns: {columns}.", ""]
        if "scale" in version.get("subresources", {}):
            out += ["Has the `scale` subresource: `kubectl scale` sets `spec.replicas`.", ""]
        for part in ("spec", "status"):
            section = schema["properties"][part]
            out += [f"### {names['kind']} `{part}`", ""]
            if section.get("description"):
                out += [_cell(section["description"]), ""]
            if part == "status":
                out += [
                    "Written by the operator only (the `status` subresource); never set it.",
                    "",
                ]
            out += _table(section, part)
            out.append("")
    out += _environment()
    return "\n".join(out).rstrip("\n") + "\n"


def _environment() -> list[str]:
    """What every container of a shard finds in its environment (rackscale.api.environment)."""
    nccl = ", ".join(f"`{name}={value}`" for name, value in MULTI_NODE_NVLINK_ENV)
    out = [
        "## Pod environment",
        "",
        "Every container (and init container) of every pod the operator creates gets these "
        "variables, set before the container's own `env`: its `command`, `args` and `env` "
        "values may use them as `$(NAME)`, which the kubelet expands. A variable of the same "
        "name in the template is replaced.",
        "",
        "| variable | value |",
        "| --- | --- |",
    ]
    out += [f"| `{name}` | {_cell(meaning)} |" for name, meaning in ENVIRONMENT + ROLE_ENVIRONMENT]
    out += [
        "",
        "When a replica's NVLink domain is larger than a node (its RackPool has `nvlinkDomain: "
        "Rack` and its pods are on more than one node), every container (not the init "
        f"containers) also gets {nccl}, which NCCL needs to use NVLink across nodes, unless the "
        "container's `env` already sets them (its value is kept; a value from `envFrom` alone "
        "is overridden).",
        "",
    ]
    return out


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
