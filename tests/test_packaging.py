"""Chart metadata (Artifact Hub annotations) and the krew plugin manifest agree with the code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rackscale import __version__
from rackscale.api import InferenceDeployment, RackPool
from rackscale.api.crd import definitions
from rackscale.cli.main import kubectl_plugin

ROOT = Path(__file__).resolve().parent.parent
CHART = yaml.safe_load((ROOT / "charts" / "rackscale" / "Chart.yaml").read_text())
KREW = yaml.safe_load((ROOT / "plugins" / "krew" / "rackscale.yaml").read_text())


def test_chart_metadata_for_artifact_hub() -> None:
    for key in ("home", "sources", "icon", "maintainers"):
        assert CHART.get(key), key
    annotations = CHART["annotations"]
    assert annotations["artifacthub.io/license"] == "Apache-2.0"
    [image] = yaml.safe_load(annotations["artifacthub.io/images"])
    assert image["image"].endswith(f":{CHART['appVersion']}")
    crds = yaml.safe_load(annotations["artifacthub.io/crds"])
    generated = {d["spec"]["names"]["kind"]: d["metadata"]["name"] for d in definitions().values()}
    assert {c["kind"]: c["name"] for c in crds} == generated
    assert {c["version"] for c in crds} == {"v1alpha1"}
    models = {"RackPool": RackPool, "InferenceDeployment": InferenceDeployment}
    examples = yaml.safe_load(annotations["artifacthub.io/crdsExamples"])
    assert {e["kind"] for e in examples} == set(models)
    for example in examples:
        models[example["kind"]].model_validate(example)  # raises naming the field if not


def test_krew_manifest() -> None:
    assert KREW["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert (KREW["kind"], KREW["metadata"]["name"]) == ("Plugin", "rackscale")
    spec = KREW["spec"]
    assert spec["version"] == f"v{__version__}"
    assert len(spec["shortDescription"]) <= 64
    for platform in spec["platforms"]:
        assert platform["bin"] == "kubectl-rackscale"
        assert len(platform["sha256"]) == 64
        assert int(platform["sha256"], 16)
        assert platform["uri"].endswith(f"kubectl-rackscale-{__version__}.tar.gz")
    launcher = ROOT / "plugins" / "krew" / "kubectl-rackscale"
    assert launcher.stat().st_mode & 0o111
    assert 'exec "$venv/bin/kubectl-rackscale" "$@"' in launcher.read_text()


def test_kubectl_rackscale_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert kubectl_plugin(["version"]) == 0
    assert capsys.readouterr().out == f"kubectl-rackscale {__version__}\n"
    assert kubectl_plugin(["version", "-o", "json"]) == 0
    assert f'"version": "{__version__}"' in capsys.readouterr().out
