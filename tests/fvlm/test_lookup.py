"""``fvlm lookup`` answers "which study is st_...?"; command-line paths resolve against the working directory;
each quarantine reason prints once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "preprocessing"))
from dicom_factory import write_ct_series  # noqa: E402

SALT = "lookup-test-salt"


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A params file in ``other/`` (its own folder), the shell in ``tmp_path``."""
    params = tmp_path / "other" / "params.yaml"
    params.parent.mkdir()
    params.write_text(f"privacy: {{salt: {SALT}}}\nconvert: {{workers: 1, min_slices: 3}}\n")
    monkeypatch.setenv("FVLM_NO_FLOWS", "1")
    monkeypatch.delenv("FVLM_SALT", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_command_line_paths_resolve_against_the_working_directory(project: Path) -> None:
    from fvlm.cli import build_parser

    args = build_parser().parse_args(["--params", "other/params.yaml", "convert", "./rel", "out"])
    assert (args.input, args.output) == (str(project / "rel"), str(project / "out"))
    args = build_parser().parse_args(["shard", "--out", "s", "--metrics", "m.json"])
    assert (args.out, args.metrics) == (str(project / "s"), str(project / "m.json"))
    args = build_parser().parse_args(["parse-reports", "r.csv", "o.parquet"])
    assert (args.reports_csv, args.out_parquet) == (str(project / "r.csv"), str(project / "o.parquet"))


def test_convert_then_lookup_maps_every_pseudonym_back(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.privacy import pseudonym
    from fvlm.cli import main

    fixture = write_ct_series(project / "rel" / "P07", n_slices=4, patient_id="PAT-7")
    write_ct_series(project / "rel" / "short", n_slices=2, seed=2)  # quarantined: fewer than convert.min_slices
    code = main(["--params", "other/params.yaml", "convert", "./rel", "out"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (project / "out" / "studies.parquet").is_file()  # ./rel and out: the shell's folder, not other/
    assert not (project / "other" / "out").exists()
    printed = captured.out + captured.err
    assert printed.count("fewer than convert.min_slices=3") == 1  # once, naming the params key
    identity_map = project / "other" / ".fvlm-private" / "identity.sqlite"  # params paths: the params folder
    assert identity_map.is_file()

    study_id = pseudonym(fixture.study_uid, SALT, kind="study")
    assert main(["--params", "other/params.yaml", "lookup", study_id]) == 0
    out = capsys.readouterr().out
    assert "P07" in out and fixture.study_uid in out and "PAT-7" in out
    # every pseudonym the quarantine message printed can be looked up too
    quarantined = next(line for line in printed.splitlines() if "quarantined st_" in line)
    shown = quarantined.split("quarantined ", 1)[1].split(":", 1)[0]
    assert main(["--params", "other/params.yaml", "lookup", shown, "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["folder"] == "short"
    assert main(["--params", "other/params.yaml", "lookup", "st_0000000000000000"]) == 1
    assert "not in" in capsys.readouterr().err
