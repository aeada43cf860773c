"""Acceptance: a real hospital export, the README's way (README "Your own data", steps 1, 3, 4).

The export is every folder of ../shared/data that directly holds DICOM files (the TotalSegmentator example
series, dcmqi, dicom2nifti, dcm_qa_ct, cornerstone3d, pydicom, pylibjpeg: real scanners' headers, ~20
folders), copied to ``export/P01..PNN`` outside the repo copy; one real CT-RATE report per study (read at
run time from ct_clip/, never committed) keyed ``study_key`` = StudyInstanceUID, or ``folder:PNN`` for a
study without one (docs/convert.md, Identity). Segmentation is TotalSegmentator with stand-in random
weights (``segmentation.standin_weights``). Then:

1. ``dvc add`` the export and the reports as the README says; ``dvc repro`` (it may end in a clear
   failure: a tiny cohort cannot train). Every export folder's studies are in ``studies.parquet`` (ok, or
   quarantined with a reason); the study without PatientID / StudyInstanceUID is ok and reaches the shards;
   no traceback; a training without signal stops with NoLearningSignalError's reason and nothing is
   promoted; an evaluation (when a model exists) says ``promoted: false``, ``evidence_enough: false``.
2. ``fvlm predict`` on an ok study (when a model exists): warnings name the stand-in weights, and no call
   is made where no threshold exists.
3. The nightly ingest on that layout: one held-back real study dropped into ``data/incoming`` is moved and
   ``dvc add``-ed (``data/raw/dicom.dvc`` changes; no DVC "overlap" refusal).
4. ``fvlm lookup`` of a quarantined study's pseudonym prints its export folder.

What it finds on the shared data (2026-12-04): 19 export folders, 21 studies; 4 ok at convert (dcmqi
ct-3slice + its SEG folder, dicom2nifti sliceincrement 001 / 002, the TotalSegmentator example), 17
quarantined (single slices under convert.min_slices, MR, localizer / secondary capture, same-position
slices, a conflicting duplicate SOPInstanceUID); shard quarantines one more (stand-in mask without anatomy)
and warns that split test is empty; training stops with NoLearningSignalError (exit 1, no model, nothing
registered), so evaluate and predict are not reached on this data (their checks run for an export that
trains). The ingest moves the held-back gantry-tilt study into data/raw/dicom and ``dvc add``s it.

Runtime (``pytest tests/test_e2e_real_export.py -m slow``, 2026-12-04, 2-core VM): 77 s idle; 3-5.5 min while
another test run loaded the machine (load average 7-20).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.test_e2e_own_data import _env, _run

pytestmark = [pytest.mark.slow, pytest.mark.shared]

SALT = "real-export-acceptance-salt"
# a study without StudyInstanceUID / PatientID: the only real 20-slice volume of the shared data
NO_IDENTITY_FOLDER = "totalsegmentator/example_ct_dicom"
# held back from the first export, dropped into the watch folder for the ingest (one CT study of its own)
HELD_BACK_FOLDER = "dicom2nifti/tests/data/failing/gantrytilting/001"


def _is_dicom(path: Path) -> bool:
    """The DICM preamble, or (files written without it) a dataset pydicom reads with a SOPClassUID."""
    with path.open("rb") as handle:
        head = handle.read(132)
    if head[128:132] == b"DICM":
        return True
    import pydicom

    try:
        return "SOPClassUID" in pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # not DICOM at all (LICENSE, README, NIfTI ...)
        return False


def _dicom_folders(shared: Path) -> dict[str, list[Path]]:
    """{folder relative to shared: its DICOM files} for every folder directly holding DICOM files."""
    found: dict[str, list[Path]] = {}
    for folder, _, names in sorted(os.walk(shared)):
        files = [Path(folder) / name for name in sorted(names) if _is_dicom(Path(folder) / name)]
        if files:
            found[Path(folder).relative_to(shared).as_posix()] = files
    return found


def _study_keys(files: list[Path], export_name: str) -> set[str]:
    """The study keys convert gives these files: StudyInstanceUID, or ``folder:<export name>`` without one.
    Files without a SOPClassUID (a Philips DIRFILE index) belong to no study."""
    import pydicom

    keys: set[str] = set()
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if "SOPClassUID" not in header:
            continue
        keys.add(str(header.get("StudyInstanceUID", "") or "").strip() or f"folder:{export_name}")
    return keys


def _ctrate_reports(shared: Path, count: int) -> list[str]:
    """The first ``count`` CT-RATE reports (Findings and Impression joined, ct_clip/.../train.csv)."""
    with (shared / "ct_clip" / "text_classifier" / "data" / "train.csv").open(newline="") as handle:
        texts = [row["report_text"] for row in csv.DictReader(handle) if row["report_text"].strip()]
    assert len(texts) >= count, f"ct_clip train.csv holds {len(texts)} reports, {count} needed"
    return texts[:count]


def _write_reports(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study_key", "Findings", "Impression"])
        writer.writerows((key, text, "") for key, text in rows)


def _call(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _studies(repo: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    return {row["study_id"]: row for row in pq.read_table(repo / "data" / "converted" / "studies.parquet").to_pylist()}


def _sharded(repo: Path) -> set[str]:
    import pyarrow.parquet as pq

    return {
        study
        for part in sorted((repo / "data" / "shards").glob("*/part-*.parquet"))
        for study in pq.read_table(part, columns=["study_id"]).column("study_id").to_pylist()
    }


def _assert_no_traceback(output: str, what: str) -> None:
    """Bad data is quarantined with a reason, never a Python traceback (also not an ignored one at exit)."""
    at = output.find("Traceback")
    assert at < 0, f"{what} printed a traceback:\n{output[max(0, at - 1500) : at + 2500]}"


def _registry(repo: Path) -> tuple[list[str], str | None]:
    """(the registered versions of fvlm-ct, the version its @champion alias points at or None)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / '.fvlm-services' / 'mlflow' / 'mlflow.db'}")
    versions = sorted(str(found.version) for found in client.search_model_versions("name='fvlm-ct'"))
    try:
        return versions, str(client.get_model_version_by_alias("fvlm-ct", "champion").version)
    except mlflow.exceptions.MlflowException:
        return versions, None


def test_real_export_readme_way(
    tmp_path: Path, shared_data: Path, copy_repo: Callable[[Path], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from preprocessing.deid import study_pseudonym
    from segmentation.standin_weights import build_standin_weights

    folders = _dicom_folders(shared_data)
    assert NO_IDENTITY_FOLDER in folders and HELD_BACK_FOLDER in folders, sorted(folders)
    exported = [name for name in folders if name != HELD_BACK_FOLDER]

    # the hospital's export and reports, outside the repository
    export = tmp_path / "pacs" / "export"
    names = {source: f"P{index:02d}" for index, source in enumerate(exported, start=1)}
    keys: dict[str, set[str]] = {}
    for source, name in names.items():
        (export / name).mkdir(parents=True)
        for path in folders[source]:
            shutil.copy2(path, export / name / path.name)
        keys[name] = _study_keys(folders[source], name)
    held_name = f"P{len(exported) + 1:02d}"
    held_keys = _study_keys(folders[HELD_BACK_FOLDER], held_name)
    all_keys = sorted(set().union(*keys.values()))
    assert not held_keys & set(all_keys), "the held-back study must be a new study"
    texts = _ctrate_reports(shared_data, len(all_keys) + len(held_keys))
    reports = tmp_path / "pacs" / "reports.csv"
    _write_reports(reports, list(zip(all_keys, texts, strict=False)))

    # stand-in TotalSegmentator weights (random: labels are noise)
    home = tmp_path / "totalseg_home"
    from core.env import ensure_totalseg_config

    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))  # ensure_totalseg_config sets it: restore after
    ensure_totalseg_config(home)
    build_standin_weights(home / "nnunet" / "results", ("fast",))

    repo = copy_repo(tmp_path / "repo")
    env = _env(repo, tmp_path / "access.log")
    env["FVLM_SALT"] = SALT
    env["TOTALSEG_HOME_DIR"] = str(home)
    env.pop("TOTALSEG_WEIGHTS_PATH", None)
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[variable] = str(home / "nnunet" / "results")
    fvlm = [sys.executable, "-m", "fvlm.cli"]
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)

    # README step 1
    (repo / "data" / "raw").mkdir(parents=True)
    _run([*dvc, "add", str(export), "-o", "data/raw/dicom"], repo, env)
    _run([*dvc, "add", str(reports), "-o", "data/raw/reports.csv"], repo, env)
    (repo / "data" / "raw" / "masks").mkdir()
    params_path = repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["paths"].update(
        raw_dataset="data/raw",
        raw_dicom="data/raw/dicom",
        reports_csv="data/raw/reports.csv",
        precomputed_masks="data/raw/masks",
    )
    params["segment"].update(backend="totalsegmentator", device="cpu", mode="fast")
    params["reports"].update(id_column="study_key", findings_column="Findings", impression_column="Impression")
    params["convert"]["min_slices"] = 3  # README: short series
    params["train"].update(steps=6, batch_size=2, checkpoint_every=6)
    params["evaluate"]["bootstrap"] = 10
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))

    # README step 3
    repro = _call([*dvc, "repro"], repo, env)
    output = repro.stdout + repro.stderr
    (tmp_path / "repro.log").write_text(output)  # kept for a failure's post-mortem (tmp_path)
    _assert_no_traceback(output, "dvc repro")

    # every export folder's fate is recorded: ok, or quarantined with a reason
    studies = _studies(repo)
    fates: dict[str, list[str]] = {}
    for name, study_keys in keys.items():
        for key in sorted(study_keys):
            study_id = study_pseudonym(key, SALT)
            assert study_id in studies, f"{name} ({key}): no row in studies.parquet\n{output[-4000:]}"
            row = studies[study_id]
            assert row["status"] in ("ok", "quarantined"), row
            if row["status"] == "quarantined":
                assert row["reason"].strip(), f"{name}: quarantined without a reason"
                # a reason a params value can fix names the key
                assert "fewer than" not in row["reason"] or "convert.min_slices" in row["reason"], row["reason"]
                assert f"quarantined {study_id}" in output, f"{name}: its quarantine is not reported by pseudonym"
            fates.setdefault(name, []).append(f"{row['status']}: {row['reason']}"[:160])
    print(json.dumps(fates, indent=1))
    reported = [line.strip() for line in output.splitlines() if line.strip().startswith("quarantined st_")]
    assert len(reported) == len(set(reported)), "a quarantine line printed more than once"

    # the study without PatientID and StudyInstanceUID is not lost
    no_identity = study_pseudonym(f"folder:{names[NO_IDENTITY_FOLDER]}", SALT)
    assert studies[no_identity]["status"] == "ok", studies[no_identity]
    assert studies[no_identity]["patient_id"], "a study without PatientID must be its own patient"
    import pyarrow.parquet as pq

    parsed = pq.read_table(repo / "data" / "reports" / "reports.studies.parquet", columns=["study_id", "status"])
    report_status = dict(zip(parsed.column("study_id").to_pylist(), parsed.column("status").to_pylist(), strict=True))
    assert report_status.get(no_identity) == "ok", "the folder:PNN report row did not match the keyless study"
    segmented_and_sharded = (repo / "data" / "shards" / "manifest.json").is_file()
    if segmented_and_sharded:
        assert no_identity in _sharded(repo), "the study without PatientID did not reach the shards"
        splits = json.loads((repo / "data" / "shards" / "manifest.json").read_text())["splits"]
        for split, counts in splits.items():  # a tiny cohort leaves a split empty: shard says so, naming split.*
            assert counts["studies"] or (f"split {split} is empty" in output and f"split.{split}" in output), split

    # training: either a model, or a loud NoLearningSignalError and nothing promoted
    model = repo / "data" / "models" / "model"
    failed_stage = next(
        (line.split("'")[1] for line in output.splitlines() if "failed to reproduce" in line and "'" in line), None
    )
    if repro.returncode != 0:
        assert failed_stage == "train", f"dvc repro failed before training ({failed_stage}):\n{output[-6000:]}"
        assert "no anatomy entered it" in output and "exited with 1" in output, output[-6000:]
        assert _registry(repo) == ([], None), "a failed training registered or promoted a model"
        if model.is_dir():
            _run([*dvc, "repro", "evaluate"], repo, env)
    assert _registry(repo)[1] is None, "a model below the evidence floor became @champion"

    if (repo / "metrics" / "eval.json").is_file():
        evaluation = json.loads((repo / "metrics" / "eval.json").read_text())
        assert not evaluation["promoted"] and not evaluation["evidence_enough"], evaluation

    # predict on the study without identity (only when a model exists)
    if model.is_dir():
        _check_predict(repo, env, model, no_identity, tmp_path / "prediction.json")
    else:
        print(f"no model (dvc repro ended with {repro.returncode} at {failed_stage!r}): predict not run")

    # README step 4: the nightly ingest on this layout
    watch = repo / "data" / "incoming"
    shutil.copytree(folders[HELD_BACK_FOLDER][0].parent, watch / held_name)
    _write_reports(watch / "new_reports.csv", list(zip(sorted(held_keys), texts[len(all_keys) :], strict=False)))
    dvc_file = repo / "data" / "raw" / "dicom.dvc"
    tracked_before = dvc_file.read_text()
    script = (
        "import json; from flows.deployments import ingest_flow; "
        "print('INGEST=' + json.dumps(ingest_flow(settle_s=0, push=False)['ingest']))"
    )
    ingest = _call([sys.executable, "-c", script], repo, env)
    ingest_output = ingest.stdout + ingest.stderr
    (tmp_path / "ingest.log").write_text(ingest_output)
    assert "overlap" not in ingest_output, ingest_output[-4000:]
    assert "INGEST=" in ingest_output, ingest_output[-6000:]
    result = json.loads(ingest_output.split("INGEST=", 1)[1].splitlines()[0])
    assert result["studies_moved"] == 1 and not result["rejected"], result
    assert dvc_file.read_text() != tracked_before, "the ingest did not dvc add the new study"
    _assert_no_traceback(ingest_output, "the ingest flow")
    after_ingest = _studies(repo)  # the ingest's `dvc repro shard` converted the new study
    assert all(study_pseudonym(key, SALT) in after_ingest for key in held_keys), sorted(held_keys)

    # lookup maps a quarantined study's pseudonym back to its export folder
    # (a study whose files lie in one folder: one spread over several is filed under their common folder)
    folders_of: dict[str, list[str]] = {}
    for name, study_keys in keys.items():
        for key in study_keys:
            folders_of.setdefault(key, []).append(name)
    quarantined = sorted(
        (names_of[0], study_pseudonym(key, SALT))
        for key, names_of in folders_of.items()
        if len(names_of) == 1 and studies[study_pseudonym(key, SALT)]["status"] == "quarantined"
    )
    assert quarantined, "no study was quarantined: the real export has several that cannot be volumes"
    name, study_id = quarantined[0]
    looked_up = _run([*fvlm, "lookup", study_id], repo, env)
    assert _looked_up_folder(looked_up) == name, looked_up
    looked_up = _run([*fvlm, "lookup", no_identity], repo, env)  # keyless: its folder and "its own patient"
    assert _looked_up_folder(looked_up) == names[NO_IDENTITY_FOLDER] and "its own patient" in looked_up, looked_up


def _looked_up_folder(text: str) -> str | None:
    """The ``folder:`` value of `fvlm lookup`'s first record."""
    return next((line.split()[1] for line in text.splitlines() if line.strip().startswith("folder:")), None)


def _check_predict(repo: Path, env: dict[str, str], model: Path, study_id: str, out: Path) -> None:
    """``fvlm predict``: warnings name the stand-in weights; no call where no threshold exists."""
    command = [
        sys.executable,
        "-m",
        "fvlm.cli",
        "predict",
        "--study",
        study_id,
        "--model",
        str(model),
        "--out",
        str(out),
    ]
    thresholds = repo / "data" / "eval" / "thresholds.json"
    if thresholds.is_file():
        command += ["--thresholds", str(thresholds)]
    summary = _run(command, repo, env)
    payload = json.loads(out.read_text())
    assert any("stand-in" in warning for warning in payload["warnings"]), payload["warnings"]
    assert payload["no_call_labels"] or "no call possible" in summary, summary
