"""Reading Kubernetes manifests from files, with errors that name the file, object and field.

Files are read fast enough for a CI gate on a cluster of any size: JSON (`kubectl get -o json`)
with the standard library, YAML with libyaml's C loader when PyYAML has it. A large cluster file
is read by a line reader for the block layout kubectl prints, which builds only the fields the
snapshot reads: building Python objects for every label, image, address and heartbeat of 18,000
nodes through libyaml is what takes the time. Anything else that reader leaves to libyaml.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from rackscale.api import InferenceDeployment, RackPool, format_errors

Resource = TypeVar("Resource", RackPool, InferenceDeployment)

# libyaml's parser where PyYAML was built with it (the wheels are), else the pure-Python one.
SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Files larger than this are read by the fast reader (`_Reader`), which builds only what KEEP
# lists; smaller ones by libyaml, whose errors name the line.
FAST_ABOVE_BYTES = 1 << 20

# Object kind -> path inside the object -> the keys kept there; everything else is skipped before
# parsing. Only what `build_snapshot` and the models read (see topology/objects.py).
_METADATA = frozenset({"name", "namespace", "labels", "deletionTimestamp", "generation"})
_CONTAINER = frozenset({"name", "resources"})
KEEP: dict[str, dict[tuple[str, ...], frozenset[str]]] = {
    "Node": {
        (): frozenset({"apiVersion", "kind", "metadata", "spec", "status"}),
        ("metadata",): _METADATA,
        ("spec",): frozenset({"unschedulable", "taints"}),
        ("status",): frozenset({"allocatable", "capacity", "conditions"}),
        ("status", "conditions"): frozenset({"type", "status"}),
    },
    "Pod": {
        (): frozenset({"apiVersion", "kind", "metadata", "spec", "status"}),
        ("metadata",): _METADATA,
        ("spec",): frozenset({"nodeName", "affinity", "containers", "initContainers"}),
        ("spec", "containers"): _CONTAINER,
        ("spec", "initContainers"): _CONTAINER,
        ("status",): frozenset({"phase"}),
    },
    "RackPool": {
        (): frozenset({"apiVersion", "kind", "metadata", "spec"}),
        ("metadata",): _METADATA,
    },
}


# Plain `key: value` mappings read by a tighter loop; node labels only those in `labels`.
FLAT = {
    "Node": {("metadata", "labels"), ("status", "allocatable"), ("status", "capacity")},
    "Pod": {("metadata", "labels")},
}


class InputError(Exception):
    """A file the user gave cannot be used; the message is one line that says where and why."""


def read_text(path: Path) -> str:
    """The file as text; a binary or non-UTF-8 file is one line naming it."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror or error}") from error
    if b"\x00" in data[:8192]:
        raise InputError(f"{path}: not a text file (it holds binary data): give YAML or JSON")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(
            f"{path}: not UTF-8 text (invalid byte at offset {error.start}): give YAML or JSON"
        ) from error


class Unsupported(Exception):
    """A construct the fast reader leaves to libyaml."""


_WORDS = frozenset({
    "yes", "Yes", "YES", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE",
    "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL",
})  # fmt: skip
_SPECIAL = frozenset("[]{}&*!|>%@`#,?:-'\"")
_plain_memo: dict[str, Any] = {}


def _scalar(text: str) -> Any:
    """One scalar on one line, as PyYAML's safe loader reads it."""
    first = text[0]
    if first == '"':
        if len(text) < 2 or text[-1] != '"':
            raise Unsupported(text)
        try:
            return json.loads(text)  # YAML's escapes beyond JSON's are left to libyaml
        except json.JSONDecodeError as error:
            raise Unsupported(text) from error
    if first == "'":
        inner = text[1:-1]
        if len(text) < 2 or text[-1] != "'" or "'" in inner.replace("''", ""):
            raise Unsupported(text)
        return inner.replace("''", "'")
    if text in ("{}", "[]"):
        return {} if text == "{}" else []
    if first in _SPECIAL or " #" in text or "\t" in text:
        raise Unsupported(text)
    if first.isalpha() and text not in _WORDS:
        return text  # YAML 1.1 types no plain scalar starting with a letter, but those words
    if text not in _plain_memo:
        _plain_memo[text] = yaml.load(text, Loader=SafeLoader)
    return _plain_memo[text]


def _key(content: str) -> tuple[Any, str]:
    """`key: value` -> (key, value text); (None, '') when the line starts no mapping entry."""
    if content[:1] in ('"', "'"):
        end = content.find(content[0], 1)
        if (
            end < 0
            or content[end + 1 : end + 2] != ":"
            or content[end + 2 : end + 3] not in ("", " ")
        ):
            return None, ""
        return _scalar(content[: end + 1]), content[end + 2 :].strip()
    colon = content.find(": ")
    if colon < 0:
        if not content.endswith(":"):
            return None, ""
        colon = len(content) - 1
    key = content[:colon]
    if not key or key[0] in _SPECIAL or ":" in key or "#" in key:
        raise Unsupported(content)
    return (key if key[0].isalpha() and key not in _WORDS else _scalar(key)), content[
        colon + 2 :
    ].strip()


# Characters YAML 1.1 reads as line breaks besides "\n" (a CRLF file, say): the reader splits on
# "\n" alone, so a file holding one is left to libyaml.
_LINE_BREAKS = ("\r", "\x85", "\u2028", "\u2029")
# A value that may go on past its line, and so past a field skipped by indentation (a quoted or
# flow scalar continues at any indentation): a quoted scalar left open, or followed by more, or
# with an escape JSON lacks; a flow collection other than {} and [].
_SPANNING = re.compile(
    r"[:-] (?:'(?:[^'\n]++|'')*+(?:\n|'[^'\n])"
    r'|"(?:[^"\\\n]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+(?:\n|\\|"[^\n])'
    r"|[\[{](?![\]}]\n))"
)
# A quoted key left open at the end of its line.
_OPEN_KEY = re.compile(r"\n *+(?:- )*+(?:'(?:[^'\n]++|'')*+\n|\"(?:[^\"\\\n]++|\\.)*+\n)")


def _check(text: str) -> None:
    """Raise `Unsupported` for what the reader cannot see line by line in a field it skips."""
    for character in _LINE_BREAKS:
        if character in text:
            raise Unsupported(repr(character))
    lines = "\n" + text + "\n"
    for pattern in (_SPANNING, _OPEN_KEY):
        if (found := pattern.search(lines)) is not None:
            raise Unsupported(found.group())


class _Reader:
    """Block-style YAML as kubectl prints it, one pass over the lines, skipping what `KEEP` leaves
    out. Anything else (flow collections, anchors, block or multi-line scalars, comments after
    values, tabs) raises `Unsupported`, and libyaml reads the file instead."""

    def __init__(self, text: str, prune: bool, labels: frozenset[str] | None = None) -> None:
        _check(text)
        self.lines = text.split("\n")
        self.i = 0
        self.prune = prune
        self.labels = labels  # with prune: the node label keys to keep; None: every one

    def _flat(self, indent: int, keys: frozenset[str] | None) -> dict[Any, Any]:
        """A mapping of scalars at `indent`, and only `keys` of it (all when None)."""
        out: dict[Any, Any] = {}
        lines = self.lines
        prefix = " " * indent
        n = len(lines)
        i = self.i
        while i < n:
            line = lines[i]
            if not line.startswith(prefix):
                if not line.strip() or line.lstrip(" ").startswith("#"):
                    i += 1
                    continue
                break
            content = line[indent:]
            if content[:1] in (" ", "#", ""):
                if content.strip() and not content.lstrip(" ").startswith("#"):
                    raise Unsupported(line)  # deeper: not a flat mapping
                i += 1
                continue
            key, sep, value = content.partition(": ")
            if not sep or key[:1] in ('"', "'") or not value:
                raise Unsupported(line)
            i += 1
            if keys is None or key in keys:
                if key in out:
                    raise Unsupported(f"duplicate key {key}")
                out[key if key[0].isalpha() and key not in _WORDS else _scalar(key)] = _scalar(
                    value.strip()
                )
        self.i = i
        return out

    def _next(self) -> tuple[int, str] | None:
        """The next line that holds something: (indent, content); None at the end."""
        lines = self.lines
        while self.i < len(lines):
            line = lines[self.i]
            content = line.lstrip(" ")
            if content and content[0] != "#":
                if content[0] == "\t":
                    raise Unsupported("tab")
                return len(line) - len(content), content
            self.i += 1
        return None

    def documents(self) -> list[Any]:
        docs: list[Any] = []
        while (head := self._next()) is not None:
            indent, content = head
            if content.startswith("---"):
                if content.strip() != "---":
                    raise Unsupported(content)
                self.i += 1
                continue
            if content.startswith(("%", "...")) or indent:
                raise Unsupported(content)
            docs.append(self._block(0, content, (), None, root=True))
        return docs

    def _block(
        self, indent: int, content: str, path: tuple[str, ...], kind: str | None, root: bool
    ) -> Any:
        if content.startswith("- ") or content == "-":
            return self._sequence(indent, path, kind, root)
        key, _ = _key(content)
        if key is None:
            raise Unsupported(content)  # a document that is a bare scalar
        return self._mapping(indent, path, kind, root)

    def _skip(self, indent: int) -> None:
        """Skip the value of an entry at `indent`: deeper lines, and a sequence at `indent`."""
        lines = self.lines
        deeper = " " * (indent + 1)
        dash = " " * indent + "-"
        n = len(lines)
        i = self.i
        while i < n:
            line = lines[i]
            if line.startswith(deeper) or line.startswith(dash) or not line.strip():
                i += 1
                continue
            if line.lstrip(" ").startswith("#"):
                i += 1
                continue
            break
        self.i = i

    def _mapping(  # noqa: C901, PLR0912 - the fast reader's hot loop, one line a turn, kept inline for speed
        self,
        indent: int,
        path: tuple[str, ...],
        kind: str | None,
        root: bool,
        first: str | None = None,
    ) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        keep = KEEP.get(kind or "", {}).get(path) if self.prune else None
        content: str | None = first
        while True:
            if content is None:
                head = self._next()
                if head is None or head[0] < indent:
                    return out
                if head[0] > indent:
                    raise Unsupported(head[1])
                content = head[1]
                if content.startswith(("- ", "---", "...")) or content == "-":
                    return out
            self.i += 1
            if keep is not None and content[0].isalpha():
                # A plain key left out: skipped before anything is parsed (most lines are).
                colon = content.find(":")
                plain = colon > 0 and content[colon + 1 : colon + 2] in ("", " ")
                if plain and content[:colon] not in keep:
                    content = None
                    self._skip(indent)
                    continue
            key, value = _key(content)
            content = None
            if key is None:
                raise Unsupported("not a mapping entry")
            if key in out:
                raise Unsupported(f"duplicate key {key}")
            if root and key == "kind" and value:
                kind = str(_scalar(value))
                keep = KEEP.get(kind, {}).get(path) if self.prune else None
            if keep is not None and key not in keep:
                self._skip(indent)
                continue
            if value:
                out[key] = _scalar(value)
                continue
            head = self._next()
            child_path = (*path, str(key))
            if head is None or head[0] < indent:
                out[key] = None
            elif head[1].startswith("- ") or head[1] == "-":
                out[key] = self._sequence(head[0], child_path, kind, root and key == "items")
            elif head[0] > indent:
                flat = self.prune and child_path in FLAT.get(kind or "", ())
                if flat:
                    labels = self.labels if kind == "Node" and key == "labels" else None
                    out[key] = self._flat(head[0], labels)
                else:
                    out[key] = self._mapping(head[0], child_path, kind, False)
            else:
                out[key] = None

    def _sequence(
        self, indent: int, path: tuple[str, ...], kind: str | None, items: bool
    ) -> list[Any]:
        out: list[Any] = []
        while True:
            head = self._next()
            if head is None or head[0] != indent:
                if head is not None and head[0] > indent:
                    raise Unsupported(head[1])
                return out
            content = head[1]
            if not (content.startswith("- ") or content == "-"):
                return out
            rest = content[1:].lstrip(" ")
            column = indent + len(content) - len(rest)
            item_kind = None if items else kind
            if not rest:
                self.i += 1
                nxt = self._next()
                if nxt is None or nxt[0] <= indent:
                    out.append(None)
                else:
                    out.append(self._block(nxt[0], nxt[1], () if items else path, item_kind, items))
                continue
            if rest.startswith("- ") or rest == "-":
                raise Unsupported(rest)
            key, _ = _key(rest)
            if key is None:
                self.i += 1
                out.append(_scalar(rest))
                continue
            out.append(self._mapping(column, () if items else path, item_kind, items, first=rest))


def _parse(path: Path, text: str, labels: frozenset[str] | None = None) -> list[Any]:
    if text.lstrip()[:1] in ("{", "["):
        try:
            return [json.loads(text)]
        except json.JSONDecodeError:
            pass  # flow-style YAML starts the same way; YAML then says what is wrong
    if len(text) > FAST_ABOVE_BYTES:
        try:
            return _Reader(text, prune=True, labels=labels).documents()
        except Unsupported:
            pass  # libyaml reads it, or says where it is wrong
    try:
        return list(yaml.load_all(text, Loader=SafeLoader))
    except yaml.YAMLError as error:
        raise _yaml_error(path, error) from error


def _yaml_error(path: Path, error: yaml.YAMLError) -> InputError:
    where = getattr(error, "problem_mark", None)
    line = f" (line {where.line + 1})" if where else ""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return InputError(f"{path}: not valid YAML{line}: {problem}")


def documents(
    path: Path,
    progress: Callable[[str], None] | None = None,
    labels: frozenset[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Every object in a file: YAML documents or JSON, with `kind: List` (and `*List`) unpacked.
    An empty List is valid and holds nothing (`kubectl get pods -A -o json` of a cluster with no
    pods); a file with no document at all is an error."""
    text = read_text(path)
    if progress is not None:
        progress(f"reading {path} ({len(text) / 1e6:.0f} MB)")
    docs = _parse(path, text, labels)
    if not any(doc is not None for doc in docs):
        raise InputError(f"{path}: no objects found (the file is empty or only comments)")
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


def objects(
    path: Path,
    kinds: tuple[str, ...],
    progress: Callable[[str], None] | None = None,
    labels: frozenset[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Objects of the given kinds; any other kind is an error naming it. With `labels`, a large
    file's Nodes may come with only those label keys (all the snapshot reads of them)."""
    for obj in documents(path, progress, labels):
        if not isinstance(obj, dict):
            raise InputError(f"{path}: a List item is not a Kubernetes object")
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
