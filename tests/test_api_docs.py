"""docs/api.md is what `python -m rackscale.api.docs` generates from the models, and it describes
every field."""

from __future__ import annotations

from pathlib import Path

from rackscale.api import docs

API_MD = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def test_docs_api_md_is_generated_from_the_models() -> None:
    assert API_MD.read_text() == docs.render(), (
        "docs/api.md differs from the models: run `make docs` "
        "(python -m rackscale.api.docs > docs/api.md)"
    )


def test_every_field_has_a_type_and_a_description() -> None:
    rows = [
        line.split(" | ")
        for line in docs.render().splitlines()
        if line.startswith("| `spec") or line.startswith("| `status")
    ]
    assert len(rows) > 60
    for row in rows:
        field, kind, description = row[0], row[1], row[-1].rstrip(" |")
        assert kind.strip(), field
        assert description.strip(), f"{field} has no description: add one to its model Field"


def test_defaults_and_validation_are_shown() -> None:
    text = docs.render()
    assert "| `spec.gpusPerRack` | integer | `72` | >= 1; <= 100000 |" in text
    assert "one of `Node`, `Rack`, `Block`, `Any`" in text
    assert "CEL `" in text
    assert "expert must divide tensor x pipeline x data" in text
    assert "`spec.parallelism.tensor`" in text
    assert "`status.conditions[].type` **required**" in text
