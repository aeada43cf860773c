"""Standing bad-input corpus: every case is one test id and asserts its outcome (docs/bad_inputs.md).

* DICOM: one cohort run over all studies; each study ok or quarantined with the expected reason,
  ``inputs == processed + quarantined``, no traceback logged, no numpy RuntimeWarning, bounded time.
* Report CSVs: a clear error naming the file, or one status per row (every row accounted for).
* params.yaml: ConfigError naming the file and the key; the CLI exits 2.
* predict: missing input / mask, non-CT study, mismatched mask: a clear error naming the file.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from tests.badinput.corpus import DICOM_CASES, PARAMS_CASES, REPORT_CASES, UNREADABLE_CASES

SALT = "bad-input-salt"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    from preprocessing.convert import ConvertJob, ConvertSettings, run_convert

    root = tmp_path_factory.mktemp("bad_dicom")
    inputs = root / "in"
    uids = {case.name: case.build(inputs / case.name) for case in DICOM_CASES}
    for name, (content, _) in UNREADABLE_CASES.items():
        (inputs / "loose").mkdir(parents=True, exist_ok=True)
        (inputs / "loose" / name).write_bytes(content() if callable(content) else content)
    handler = _Records()
    logging.getLogger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            job = ConvertJob(
                input_dir=inputs,
                output_dir=root / "out",
                workers=1,
                decode_threads=1,
                settings=ConvertSettings(salt=SALT, min_slices=3),
            )
            summary = run_convert(job)
    finally:
        logging.getLogger().removeHandler(handler)
    from core.privacy import pseudonym

    rows = {row.study_id: row for row in summary.rows}
    by_case = {name: rows[pseudonym(uid, SALT, kind="study")] for name, uid in uids.items()}
    return {"summary": summary, "rows": by_case, "logs": handler.records, "warnings": caught, "out": root / "out"}


@pytest.mark.parametrize("case", DICOM_CASES, ids=[case.name for case in DICOM_CASES])
def test_dicom_case(cohort, case) -> None:
    row = cohort["rows"][case.name]
    assert row.status == case.status, row.reason
    if case.status == "ok":
        assert row.volume_path and (cohort["out"] / row.volume_path).is_file()
        assert not case.reason or any(case.reason in warning for warning in row.warnings), row.warnings
    else:
        assert case.reason in row.reason, row.reason
        assert row.volume_path is None
        assert row.seconds < 10  # bounded: no hang, no decode of what the header merely claims


@pytest.mark.parametrize("name", sorted(UNREADABLE_CASES))
def test_unreadable_file_case(cohort, name: str) -> None:
    import pyarrow.parquet as pq

    reasons = {r["relative_path"]: r["reason"] for r in pq.read_table(cohort["out"] / "unreadable.parquet").to_pylist()}
    assert UNREADABLE_CASES[name][1] in reasons[f"loose/{name}"]


def test_dicom_cohort_accounts_for_every_input(cohort) -> None:
    summary = cohort["summary"]
    assert summary.n_studies == len(DICOM_CASES)
    assert summary.n_studies == summary.n_ok + summary.n_quarantined
    assert summary.n_ok == sum(case.status == "ok" for case in DICOM_CASES)
    assert summary.n_unreadable_files == len(UNREADABLE_CASES)
    import pyarrow.parquet as pq

    manifest = pq.read_table(cohort["out"] / "studies.parquet").to_pylist()
    assert len(manifest) == summary.n_studies and all(r["reason"] for r in manifest if r["status"] != "ok")


def test_dicom_cohort_prints_no_traceback_and_no_numpy_warning(cohort) -> None:
    tracebacks = [r.getMessage() for r in cohort["logs"] if r.exc_info]
    assert not tracebacks, tracebacks
    unexpected = [r.getMessage() for r in cohort["logs"] if "unexpected error" in r.getMessage()]
    assert not unexpected, unexpected
    numpy_warnings = [str(w.message) for w in cohort["warnings"] if issubclass(w.category, RuntimeWarning)]
    assert not numpy_warnings, numpy_warnings


# --- report CSVs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", REPORT_CASES, ids=[case.name for case in REPORT_CASES])
def test_reports_case(tmp_path: Path, case) -> None:
    from report_parsing.io import ReportsFileError, read_report_rows
    from report_parsing.tables import ParseOptions, prepare_records

    path = tmp_path / f"{case.name}.csv"
    path.write_bytes(case.content)
    options = ParseOptions(salt=SALT)
    if case.error:
        with pytest.raises(ReportsFileError) as raised:
            read_report_rows(path, options.required_columns())
        assert str(path) in str(raised.value) and case.error in str(raised.value)
        return
    _, rows = read_report_rows(path, options.required_columns())
    records = prepare_records(rows, options)
    assert len(records) == len(rows) == len(case.statuses)  # inputs == processed + quarantined
    assert tuple(record.status for record in records) == case.statuses
    for record in records:
        if record.status not in ("ok",):
            assert record.reason.startswith(f"line {record.line}")


# --- params.yaml ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "text", "expected"), PARAMS_CASES, ids=[case[0] for case in PARAMS_CASES])
def test_params_case(tmp_path: Path, name: str, text: str, expected: str) -> None:
    from core.config import ConfigError, load_config

    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(path) in str(raised.value) and expected in str(raised.value)


def test_params_error_through_cli_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fvlm.cli import main

    path = tmp_path / "params.yaml"
    path.write_text("convert:\n  workerz: 2\n")
    assert main(["--params", str(path), "convert", str(tmp_path), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert str(path) in error and "convert.workerz" in error


def test_params_missing_file(tmp_path: Path) -> None:
    from core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="no such params file"):
        load_config(tmp_path / "nope.yaml")


# --- predict inputs (few: training is being refactored) ---------------------------------------------


def _predict(repo_root: Path, *args: str) -> tuple[int, str]:
    import contextlib
    import io

    from fvlm.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--params", str(repo_root / "params.yaml"), "predict", *args])
    return code, err.getvalue()


def test_predict_missing_input_names_the_path(tmp_path: Path, repo_root: Path) -> None:
    missing = tmp_path / "no_such_study"
    code, error = _predict(repo_root, str(missing), "--model", str(tmp_path / "model"))
    assert code != 0 and str(missing) in error and "no such file" in error


def test_predict_missing_mask_names_the_mask(tmp_path: Path, repo_root: Path) -> None:
    volume = tmp_path / "ct.nii.gz"
    volume.write_bytes(b"")
    mask = tmp_path / "no_mask.nii.gz"
    code, error = _predict(repo_root, str(volume), "--mask", str(mask), "--model", str(tmp_path / "model"))
    assert code != 0 and str(mask) in error and "mask" in error


def test_predict_non_ct_study_names_the_folder(tmp_path: Path) -> None:
    from core.config import load_config
    from preprocessing.convert import ConvertJob
    from tests.badinput.corpus import non_ct
    from training.inference.predict import PredictionError, load_input_image

    non_ct(tmp_path / "mr")
    config = load_config(None)
    with pytest.raises(PredictionError) as raised:
        load_input_image(tmp_path / "mr", ConvertJob.from_config(config), tmp_path / "work")
    assert str(tmp_path / "mr") in str(raised.value) and "modality MR" in str(raised.value)


def test_predict_not_nifti_names_the_file(tmp_path: Path) -> None:
    from core.config import load_config
    from preprocessing.convert import ConvertJob
    from training.inference.predict import PredictionError, load_input_image

    bogus = tmp_path / "volume.txt"
    bogus.write_text("hello")
    with pytest.raises(PredictionError) as raised:
        load_input_image(bogus, ConvertJob.from_config(load_config(None)), tmp_path / "work")
    assert str(bogus) in str(raised.value) and "not a NIfTI" in str(raised.value)


# --- a real JPEG 2000 series (shared data), modified at test time ------------------------------------


def _j2k_series_copy(shared_data: Path, target: Path) -> list[Path]:
    import shutil

    source = shared_data / "totalsegmentator" / "example_ct_dicom"
    shutil.copytree(source, target)
    return sorted(target.iterdir())


@pytest.mark.shared
@pytest.mark.parametrize(
    ("where", "length", "status", "expected"),
    [
        # 3736 voxels off by more than 50 HU, at most 163 HU (1.25% of the slice off after smoothing)
        (0.05, 64, "quarantined", "slice 11 of 20 is far from its neighbours"),
        # 10859 voxels off by more than 50 HU, up to 626 HU
        (0.6, 512, "quarantined", "slice 11 of 20 is far from its neighbours"),
        # 627 voxels off by more than 50 HU, up to 346 HU: a warning only
        (0.7, 2048, "ok", "slice 11 of 20 is far from its neighbours"),
    ],
    ids=["subtle_quarantined", "gross_quarantined", "small_warned"],
)
def test_j2k_corrupt_codestream_slice(
    shared_data: Path, tmp_path: Path, where: float, length: int, status: str, expected: str
) -> None:
    """Bytes of one slice's JPEG 2000 codestream overwritten: it decodes without error into wrong values;
    the per-slice plausibility check names the file (its long digit runs scrubbed like any identifier)."""
    import numpy as np
    import pydicom

    from tests.preprocessing.convert_job import convert_dir

    files = _j2k_series_copy(shared_data, tmp_path / "in")
    by_position = sorted(
        files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
    )
    victim = by_position[10]
    content = bytearray(victim.read_bytes())
    start = content.rfind(b"\xff\x4f\xff\x51")
    offset = start + int((len(content) - start) * where)
    content[offset : offset + length] = np.random.default_rng(0).integers(0, 256, length, dtype=np.uint8).tobytes()
    victim.write_bytes(bytes(content))
    row = convert_dir(tmp_path / "in", tmp_path / "out", salt=SALT, min_slices=3).rows[0]
    assert row.status == status, row.reason
    text = row.reason if status == "quarantined" else " ".join(row.warnings)
    assert f"CT.[n]: {expected}" in text, text


@pytest.mark.shared
def test_j2k_header_size_unlike_codestream_names_both(shared_data: Path, tmp_path: Path) -> None:
    from tests.badinput.corpus import edit
    from tests.preprocessing.convert_job import convert_dir

    files = _j2k_series_copy(shared_data, tmp_path / "in")
    edit(files, Rows=600, Columns=600)
    row = convert_dir(tmp_path / "in", tmp_path / "out", salt=SALT, min_slices=3).rows[0]
    assert row.status == "quarantined"
    assert "JPEG 2000 codestream is 512 x 512 pixels, header Rows x Columns is 600 x 600" in row.reason, row.reason


@pytest.mark.shared
@pytest.mark.parametrize(
    "name",
    [
        "pylibjpeg_data/JPEGLS/CT1_JLSN.dcm",  # gdcm aborted the whole process on this one before the check
        "cornerstone3d/testImages/CTImage.dcm_JPEGProcess14SV1TransferSyntax_1.2.840.10008.1.2.4.70.dcm",
    ],
)
def test_jpeg_header_size_unlike_frame_is_refused_before_decoding(shared_data: Path, tmp_path: Path, name: str) -> None:
    import shutil

    from tests.badinput.corpus import edit
    from tests.preprocessing.convert_job import convert_dir

    (tmp_path / "in").mkdir()
    copy = Path(shutil.copy(shared_data / name, tmp_path / "in" / "slice.dcm"))
    edit([copy], Rows=600, Columns=600)
    row = convert_dir(tmp_path / "in", tmp_path / "out", salt=SALT, min_slices=1).rows[0]
    assert row.status == "quarantined"
    assert "slice.dcm: JPEG frame header is 512 x 512 pixels, header Rows x Columns is 600 x 600" in row.reason
