"""DVC sees exactly what runs: dvc.yaml vs params.yaml vs the keys each stage command reads.

Fast checks on the files (paths templated from params, raw inputs never a stage output, metrics in git,
plots declared) and the helpers the slow end-to-end test (tests/test_e2e_own_data.py) uses to check
the config keys each stage *read* (``$FVLM_CONFIG_ACCESS_LOG``) against the stage's declared params.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.config import ACCESS_LOG_ENV, config_from_dict, load_config
from tests.dvc_declarations import TEMPLATE, covered, declared_keys, strings_of, undeclared_reads


def _resolve(value: str, params: dict[str, Any]) -> str:
    def lookup(match: re.Match[str]) -> str:
        node: Any = params
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)

    return TEMPLATE.sub(lookup, value)


@pytest.fixture(scope="module")
def dvc_yaml(repo_root: Path) -> dict[str, Any]:
    return yaml.safe_load((repo_root / "dvc.yaml").read_text())


@pytest.fixture(scope="module")
def params(repo_root: Path) -> dict[str, Any]:
    return yaml.safe_load((repo_root / "params.yaml").read_text())


def test_no_profile_merge_in_params(params: dict[str, Any]) -> None:
    assert "profiles" not in params  # what params.yaml says is what runs
    config_from_dict(params, environ={})


def test_every_template_and_param_exists(dvc_yaml: dict[str, Any], params: dict[str, Any]) -> None:
    for name, stage in dvc_yaml["stages"].items():
        for key in declared_keys(stage):
            node: Any = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"stage {name}: {key} is not in params.yaml"
                node = node[part]


def test_paths_come_from_params_and_raw_inputs_are_no_stage_output(
    dvc_yaml: dict[str, Any], params: dict[str, Any]
) -> None:
    assert "demo_data" not in dvc_yaml["stages"]  # the generator fills a dataset; it is not a stage
    paths = params["paths"]
    raw = {paths["raw_dicom"], paths["reports_csv"], paths["precomputed_masks"], paths["raw_dataset"]}
    outs: list[str] = []
    for name, stage in dvc_yaml["stages"].items():
        text = " ".join(strings_of({k: v for k, v in stage.items() if k in ("cmd", "deps", "outs")}))
        assert "data/demo" not in text, f"stage {name} names the demo dataset instead of ${{paths.*}}"
        for section in ("outs", "metrics", "plots"):
            for item in stage.get(section, []):
                outs.append(_resolve(item if isinstance(item, str) else next(iter(item)), params))
    for out in outs:
        for path in raw:
            inside = out == path or out.startswith(path.rstrip("/") + "/") or path.startswith(out + "/")
            assert not inside, (out, path)
    convert = dvc_yaml["stages"]["convert"]
    assert "${paths.raw_dicom}" in convert["cmd"] and "${paths.raw_dicom}" in convert["deps"]
    assert "${paths.reports_csv}" in dvc_yaml["stages"]["parse_reports"]["deps"]
    assert "${paths.precomputed_masks}" in dvc_yaml["stages"]["segment"]["deps"]
    assert paths["reports_table"].startswith(paths["reports_dir"].rstrip("/") + "/")
    assert paths["raw_dicom"].startswith(paths["raw_dataset"].rstrip("/") + "/")


def test_metrics_are_git_tracked_and_plots_declared(repo_root: Path, dvc_yaml: dict[str, Any]) -> None:
    ignored = (repo_root / ".gitignore").read_text().splitlines()
    assert "/metrics/" not in ignored and "/data/" not in ignored
    for name in ("shard", "train", "evaluate"):
        for item in dvc_yaml["stages"][name]["metrics"]:
            ((path, options),) = item.items()
            assert options.get("cache") is False, path  # small JSON in git, as DVC recommends
    train_plots = dvc_yaml["stages"]["train"]["plots"]
    assert any("train_loss.csv" in next(iter(p)) for p in train_plots)
    assert any("auc_per_label.csv" in next(iter(p)) for p in dvc_yaml["stages"]["evaluate"]["plots"])
    assert "data/eval/roc" in dvc_yaml["plots"]


def test_stage_params_cover_the_keys_that_matter(dvc_yaml: dict[str, Any]) -> None:
    """`dvc exp run -S key=value` re-runs the stage that reads key: one key per stage (static side)."""
    probes = {
        "convert": "convert.strict",
        "segment": "segment.backend",
        "parse_reports": "reports.max_chars",
        "shard": "shard.zstd_level",
        "train": "train.steps",
        "evaluate": "evaluate.bootstrap",
    }
    for stage, key in probes.items():
        assert covered(key, declared_keys(dvc_yaml["stages"][stage])), (stage, key)
    assert covered("train.loss", declared_keys(dvc_yaml["stages"]["train"]))


def test_access_log_names_what_a_command_reads(
    repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dvc_yaml: dict[str, Any]
) -> None:
    log = tmp_path / "access.log"
    monkeypatch.setenv(ACCESS_LOG_ENV, str(log))
    monkeypatch.setattr("sys.argv", ["fvlm", "train"])
    config = load_config(repo_root / "params.yaml")
    assert config.train.steps == 300 and config.model.vision.depth == 4
    lines = log.read_text().splitlines()
    assert "train\ttrain.steps" in lines and "train\tmodel.vision.depth" in lines
    assert undeclared_reads(log.read_text(), dvc_yaml) == {}
    # a key the train stage does not declare is reported
    assert undeclared_reads("train\tconvert.strict\n", dvc_yaml) == {"train": {"convert.strict"}}
