"""Reading Kubernetes manifests from files, with errors that name the file, object and field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from rackscale.api import InferenceDeployment, RackPool, format_errors

Resource = TypeVar("Resource", RackPool, InferenceDeployment)


class InputError(Exception):
    """A file the user gave cannot be used; the message is one line that says where and why."""


def documents(path: Path) -> Iterator[dict[str, Any]]:
    """Every object in a file: YAML documents, with `kind: List` (and `*List`) unpacked."""
    try:
        text = path.read_text()
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror or error}") from error
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise InputError(f"{path}: not valid YAML{line}: {problem}") from error
    for number, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc:
            raise InputError(f"{path}: document {number} is not a Kubernetes object (no kind)")
        if str(doc["kind"]).endswith("List") and isinstance(doc.get("items"), list):
            yield from doc["items"]
        else:
            yield doc


def describe(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    name = meta.get("name", "<unnamed>")
    namespace = meta.get("namespace")
    return f"{obj.get('kind')} {namespace + '/' if namespace else ''}{name}"


def parse(model: type[Resource], obj: dict[str, Any], path: Path) -> Resource:
    try:
        return model.model_validate(obj)
    except ValidationError as error:
        raise InputError(f"{path}: {describe(obj)}: " + "; ".join(format_errors(error))) from error


def objects(path: Path, kinds: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Objects of the given kinds; any other kind is an error naming it."""
    for obj in documents(path):
        if obj.get("kind") not in kinds:
            raise InputError(
                f"{path}: {describe(obj)}: unexpected kind {obj.get('kind')!r} "
                f"(expected {', '.join(kinds)})"
            )
        if obj.get("kind") in ("RackPool", "InferenceDeployment") and obj.get("apiVersion") != (
            "rackscale.dev/v1alpha1"
        ):
            raise InputError(
                f"{path}: {describe(obj)}: apiVersion: expected rackscale.dev/v1alpha1, "
                f"got {obj.get('apiVersion')!r}"
            )
        yield obj
