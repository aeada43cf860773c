"""`fvlm convert` on small DICOM series generated with pydicom (tests/preprocessing/dicom_factory.py)."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dicom_factory import (  # noqa: E402
    PHI,
    SECONDARY_CAPTURE,
    expected_affine_ras_ijk,
    new_uid,
    write_ct_series,
    write_enhanced_ct,
)

from preprocessing.convert import read_manifest  # noqa: E402
from preprocessing.dicom_discovery import scan_dicom_tree  # noqa: E402
from preprocessing.volume_assembly import AssemblyError, assemble_series  # noqa: E402

SALT = "test-salt"


def canonical_expected(fixture) -> nib.Nifti1Image:
    return nib.as_closest_canonical(
        nib.Nifti1Image(fixture.hu_kji.transpose(2, 1, 0), expected_affine_ras_ijk(fixture))
    )


@pytest.fixture(scope="module")
def convert(convert_dir):
    """``convert(input_dir, output_dir, **kwargs)``: the ``convert_dir`` fixture with this file's salt and
    min_slices=3 by default."""

    def run(input_dir: Path, output_dir: Path, **kwargs):
        kwargs.setdefault("salt", SALT)
        kwargs.setdefault("min_slices", 3)
        return convert_dir(input_dir, output_dir, **kwargs)

    return run


def row_for(summary, study_uid: str):
    from core.privacy import pseudonym

    study_id = pseudonym(study_uid, SALT, kind="study")
    return next(r for r in summary.rows if r.study_id == study_id)


def assert_volume_equals(output_dir: Path, row, fixture) -> None:
    image = nib.load(output_dir / row.volume_path)
    expected = canonical_expected(fixture)
    assert image.get_data_dtype() == np.int16
    np.testing.assert_allclose(image.affine, expected.affine, atol=1e-4)
    assert np.array_equal(np.asanyarray(image.dataobj), np.asanyarray(expected.dataobj))
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")


def test_uncompressed_series_lands_on_expected_grid_in_ras(tmp_path: Path, convert) -> None:
    fixture = write_ct_series(tmp_path / "in" / "a" / "b", n_slices=9, pixel_representation=1, intercept=-1024)
    summary = convert(tmp_path / "in", tmp_path / "out")
    row = row_for(summary, fixture.study_uid)
    assert row.status == "ok", row.reason
    assert_volume_equals(tmp_path / "out", row, fixture)
    assert row.shape == [9, 24, 20] and row.slices == 9
    assert row.spacing == pytest.approx([2.5, 0.8, 0.7])
    assert row.n_input_files == 9 and len(row.source_hash) == 64


def test_oblique_and_feet_first_orientation_affine(tmp_path: Path, convert) -> None:
    angle = np.radians(12)
    orientation = (-1.0, 0.0, 0.0, 0.0, float(np.cos(angle)), float(np.sin(angle)))  # flipped rows + oblique
    fixture = write_ct_series(tmp_path / "in", n_slices=6, orientation=orientation)
    summary = convert(tmp_path / "in", tmp_path / "out")
    row = row_for(summary, fixture.study_uid)
    assert row.status == "ok", row.reason
    assert_volume_equals(tmp_path / "out", row, fixture)


@pytest.mark.parametrize(
    ("syntax", "size"),
    [
        ("1.2.840.10008.1.2.5", 24),  # RLE lossless (pydicom native)
        ("1.2.840.10008.1.2.4.80", 24),  # JPEG-LS lossless (pyjpegls)
        ("1.2.840.10008.1.2.4.90", 64),  # JPEG 2000 lossless (pylibjpeg-openjpeg)
        ("1.2.840.10008.1.2.1.99", 24),  # deflated explicit VR LE
    ],
)
def test_compressed_series_decode_identical(tmp_path: Path, syntax: str, size: int, convert) -> None:
    try:
        fixture = write_ct_series(tmp_path / "in", n_slices=4, rows=size, columns=size, transfer_syntax=syntax)
    except (NotImplementedError, RuntimeError, ValueError) as error:
        pytest.skip(f"no encoder for {syntax}: {error}")
    summary = convert(tmp_path / "in", tmp_path / "out")
    row = row_for(summary, fixture.study_uid)
    assert row.status == "ok", row.reason
    assert row.transfer_syntaxes == [syntax]
    assert_volume_equals(tmp_path / "out", row, fixture)


def test_float_rescale_signed_pixels_and_padding(tmp_path: Path, convert) -> None:
    fixture = write_ct_series(
        tmp_path / "in",
        n_slices=4,
        slope=0.5,
        intercept=-1000.5,
        pixel_representation=1,
        bits_stored=16,
        padding_value=-2000,
    )
    summary = convert(tmp_path / "in", tmp_path / "out")
    row = row_for(summary, fixture.study_uid)
    assert row.status == "ok", row.reason
    assert_volume_equals(tmp_path / "out", row, fixture)
    assert row.hu_min == -1024  # padding -> air, never -2000 * slope + intercept


def test_enhanced_ct_multiframe_assembles(tmp_path: Path, convert) -> None:
    fixture = write_enhanced_ct(tmp_path / "in" / "enhanced.dcm")
    summary = convert(tmp_path / "in", tmp_path / "out")
    row = row_for(summary, fixture.study_uid)
    assert row.status == "ok", row.reason
    assert row.slices == 12 and row.n_input_files == 1
    assert_volume_equals(tmp_path / "out", row, fixture)


def test_discovery_of_mixed_tree_lists_junk_and_groups_studies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "in"
    first = write_ct_series(root / "deep" / "nested" / "s1", n_slices=4, extension="")
    second = write_ct_series(root / "s2", n_slices=5, seed=3, patient_id="OTHER-1")
    extra = write_ct_series(root / "s1_other_series", n_slices=3, study_uid=first.study_uid, series_number=5)
    (root / "README.txt").write_text("not dicom")
    (root / "empty.dcm").write_bytes(b"")
    (root / "junk.bin").write_bytes(os.urandom(3000))
    from pydicom.fileset import FileSet

    fileset = FileSet()  # a DICOMDIR export holding a second copy of one instance
    fileset.add(first.files[0])
    fileset.write(root / "export")
    discovery = scan_dicom_tree(root)
    keys = {s.study_key: s for s in discovery.studies}
    assert set(keys) == {first.study_uid, second.study_uid}
    assert len(keys[first.study_uid].series) == 2 and keys[first.study_uid].n_files == 8
    assert sum(len(s.slices) for s in keys[first.study_uid].series.values()) == 7  # the copy is not a slice
    assert any("duplicate copy" in problem for problem in keys[first.study_uid].problems)
    assert {extra.series_uid, first.series_uid} == set(keys[first.study_uid].series)
    reasons = {u.relative_path: u.reason for u in discovery.unreadable}
    assert reasons["empty.dcm"] == "zero-byte file"
    assert "README.txt" in reasons and "junk.bin" in reasons
    assert "DICOMDIR" in reasons["export/DICOMDIR"]
    # header reads in worker processes (3 files a task): the same studies, series, slices, problems, in order
    import preprocessing.dicom_discovery as discovery_module

    monkeypatch.setattr(discovery_module, "DISCOVERY_CHUNK", 3)
    monkeypatch.setattr(discovery_module, "DISCOVERY_POOL_MIN_FILES", 0)  # a pool even for this small tree
    assert scan_dicom_tree(root, workers=2) == discovery
    # the file index (a first run records, a second reads nothing): the same discovery again
    import preprocessing.file_index as file_index_module

    monkeypatch.setattr(file_index_module, "RACY_WINDOW_NS", 0)  # files written just now count as settled
    index = tmp_path / "index.pickle"
    hashed = scan_dicom_tree(root, hash_files=True)
    assert scan_dicom_tree(root, index_path=index) == scan_dicom_tree(root, index_path=index) == hashed


def test_series_selection_policy_recorded(tmp_path: Path, convert) -> None:
    root = tmp_path / "in"
    study = new_uid()
    write_ct_series(
        root / "thick", n_slices=5, slice_spacing=5.0, study_uid=study, series_number=2, series_description="thick soft"
    )
    thin_lung = write_ct_series(
        root / "thin_lung",
        n_slices=10,
        slice_spacing=1.25,
        study_uid=study,
        series_number=3,
        kernel="B70f",
        series_description="thin lung",
    )
    thin_soft = write_ct_series(
        root / "thin_soft",
        n_slices=10,
        slice_spacing=1.25,
        study_uid=study,
        series_number=4,
        kernel="B30f",
        series_description="thin soft",
    )
    write_ct_series(
        root / "scout",
        n_slices=1,
        study_uid=study,
        series_number=1,
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        series_description="Topogram",
    )
    write_ct_series(
        root / "dose",
        n_slices=1,
        study_uid=study,
        series_number=99,
        sop_class=SECONDARY_CAPTURE,
        image_type=("DERIVED", "SECONDARY"),
        series_description="Dose Report",
    )
    write_ct_series(
        root / "sagittal",
        n_slices=10,
        study_uid=study,
        series_number=7,
        orientation=(0, 1, 0, 0, 0, -1),
        series_description="sag MPR",
    )
    summary = convert(root, tmp_path / "out", min_slices=3)
    row = row_for(summary, study)
    assert row.status == "ok" and row.series_description == "thin soft" and row.series_number == 4
    assert row.selection_policy.startswith("original_first,thinnest,soft_tissue_kernel")
    alternatives = {a["series_number"]: a for a in json.loads(row.alternatives)}
    assert alternatives[3]["excluded"] is None and alternatives[2]["excluded"] is None
    assert "localizer" in alternatives[1]["excluded"]
    assert "SOP class" in alternatives[99]["excluded"]
    assert "not axial" in alternatives[7]["excluded"]
    assert thin_lung.series_uid != thin_soft.series_uid


def test_phi_appears_nowhere_under_output(tmp_path: Path, caplog: pytest.LogCaptureFixture, convert) -> None:
    root = tmp_path / "in"
    fixture = write_ct_series(
        root / "ok", n_slices=4, series_description=f"Chest {PHI['PatientName']} 2024-02-29 {PHI['AccessionNumber']}"
    )
    write_ct_series(root / "bad", n_slices=1, patient_id="MRN-11112222")  # quarantined: 1 slice
    (root / "bad" / "IM0001.dcm").write_bytes((root / "bad" / "IM0001.dcm").read_bytes()[:600])  # truncated
    # invalid values: pydicom's validation warnings would quote them (PHI in logs) unless silenced
    invalid = dict(PHI, PatientBirthDate="Zyxwvut-1951", StudyDate="Quentina")
    invalid_series = write_ct_series(root / "invalid", n_slices=4, phi=invalid, patient_id="MRN-33334444")
    caplog.clear()
    caplog.set_level("DEBUG")
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = convert(root, tmp_path / "out")
    assert row_for(summary, invalid_series.study_uid).status == "ok"
    assert row_for(summary, fixture.study_uid).status == "ok"
    needles = [v for v in PHI.values()] + ["MRN-11112222", fixture.study_uid, "Zyxwvut", "Quentina", "Qwerty", "Plonk"]
    needles += [fixture.series_uid, fixture.patient_id, "20240229", "2024-02-29", "19510317"]
    haystacks: list[tuple[str, bytes]] = []
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            haystacks.append((str(path), data))
            if path.name.endswith(".gz"):
                haystacks.append((f"{path} (gunzipped)", gzip.decompress(data)))
            if path.suffix == ".parquet":
                haystacks.append((f"{path} (rows)", str(pq.read_table(path).to_pylist()).encode()))
    haystacks.append(("log", caplog.text.encode()))
    haystacks.append(("warnings", "\n".join(str(w.message) for w in caught).encode()))
    needles += ["MRN-33334444", "Zyxwvut-1951"]
    haystacks.append(("summary", summary.describe().encode()))
    for name, data in haystacks:
        for needle in needles:
            assert needle.encode().lower() not in data.lower(), f"{needle!r} found in {name}"
    row = row_for(summary, fixture.study_uid)
    assert row.series_description.startswith("Chest") and "[x]" in row.series_description


def test_quarantine_reasons_and_rest_of_cohort_processed(tmp_path: Path, convert) -> None:
    root = tmp_path / "in"
    good = write_ct_series(root / "good", n_slices=5)
    single = write_ct_series(root / "single", n_slices=1)
    mr = write_ct_series(root / "mr", n_slices=5, modality="MR")
    truncated = write_ct_series(root / "truncated", n_slices=4)
    victim = truncated.files[0]
    victim.write_bytes(victim.read_bytes()[:-300])
    nopixels = write_ct_series(root / "nopixels", n_slices=4)
    import pydicom

    ds = pydicom.dcmread(nopixels.files[1])
    del ds.PixelData
    ds.save_as(nopixels.files[1])
    undecodable = write_ct_series(root / "undecodable", n_slices=4)
    for path in undecodable.files:  # claims JPEG baseline, holds garbage fragments
        ds = pydicom.dcmread(path)
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([os.urandom(64)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
        ds.save_as(path)
    mixed = write_ct_series(root / "mixed", n_slices=4)
    ds = pydicom.dcmread(mixed.files[2])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9, 0.43589]
    ds.save_as(mixed.files[2])
    (root / "zero").mkdir()
    (root / "zero" / "z.dcm").write_bytes(b"")
    os.symlink(root / "does-not-exist", root / "dangling.dcm")  # a file whose read raises
    summary = convert(root, tmp_path / "out")
    assert summary.n_studies == 7
    reasons = {
        name: row_for(summary, fixture.study_uid)
        for name, fixture in [
            ("good", good),
            ("single", single),
            ("mr", mr),
            ("truncated", truncated),
            ("nopixels", nopixels),
            ("undecodable", undecodable),
            ("mixed", mixed),
        ]
    }
    assert reasons["good"].status == "ok"
    assert "fewer than convert.min_slices=3" in reasons["single"].reason
    assert "modality MR" in reasons["mr"].reason
    assert "truncated/" in reasons["truncated"].reason and "decode" in reasons["truncated"].reason
    assert "no pixel data" in reasons["nopixels"].reason and "nopixels/" in reasons["nopixels"].reason
    assert "1.2.840.10008.1.2.4.50" in reasons["undecodable"].reason
    assert "inconsistent slice orientation" in reasons["mixed"].reason
    for name in ("single", "mr", "truncated", "nopixels", "undecodable", "mixed"):
        assert reasons[name].status == "quarantined" and reasons[name].volume_path is None
    unreadable = {
        r["relative_path"]: r["reason"] for r in pq.read_table(tmp_path / "out" / "unreadable.parquet").to_pylist()
    }
    assert unreadable["zero/z.dcm"] == "zero-byte file"
    assert "cannot stat" in unreadable["dangling.dcm"]
    manifest = pq.read_table(tmp_path / "out" / "studies.parquet").to_pylist()
    assert len(manifest) == 7 and all(r["reason"] for r in manifest if r["status"] != "ok")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_permissions(tmp_path: Path, convert) -> None:
    fixture = write_ct_series(tmp_path / "in", n_slices=4)
    fixture.files[0].chmod(0)
    summary = convert(tmp_path / "in", tmp_path / "out")
    assert summary.n_unreadable_files == 1


def test_min_slices_override_converts_short_series(tmp_path: Path, convert) -> None:
    fixture = write_ct_series(tmp_path / "in", n_slices=2)
    default = convert(tmp_path / "in", tmp_path / "out1", min_slices=10)
    row = row_for(default, fixture.study_uid)
    assert row.status == "quarantined" and "convert.min_slices=10" in row.reason  # names the params key
    override = convert(tmp_path / "in", tmp_path / "out2", min_slices=1)
    row = row_for(override, fixture.study_uid)
    assert row.status == "ok" and row.shape[0] == 2


def test_single_slice_is_quarantined_at_convert_whatever_min_slices(tmp_path: Path, convert) -> None:
    """A single slice cannot be segmented: convert says so, instead of a numpy error in segmentation."""
    fixture = write_ct_series(tmp_path / "in", n_slices=1)
    row = row_for(convert(tmp_path / "in", tmp_path / "out", min_slices=1), fixture.study_uid)
    assert row.status == "quarantined" and "too few to segment" in row.reason and row.volume_path is None
    assert not list((tmp_path / "out" / "volumes").iterdir())


def test_rerun_reuses_and_reconverts_changed_study(tmp_path: Path, convert) -> None:
    a = write_ct_series(tmp_path / "in" / "a", n_slices=4)
    b = write_ct_series(tmp_path / "in" / "b", n_slices=4, seed=5)
    first = convert(tmp_path / "in", tmp_path / "out")
    assert first.n_ok == 2 and first.n_reused == 0
    volume = tmp_path / "out" / row_for(first, a.study_uid).volume_path
    stamp = volume.stat().st_mtime_ns
    second = convert(tmp_path / "in", tmp_path / "out")
    assert second.n_reused == 2 and volume.stat().st_mtime_ns == stamp
    import pydicom

    ds = pydicom.dcmread(b.files[0])
    ds.RescaleIntercept = "-1000"
    ds.save_as(b.files[0])
    third = convert(tmp_path / "in", tmp_path / "out")
    assert third.n_reused == 1 and row_for(third, b.study_uid).reused is False
    changed_config = convert(tmp_path / "in", tmp_path / "out", strict=True)
    assert changed_config.n_reused == 0
    assert set(read_manifest(tmp_path / "out" / "studies.parquet")) == {r.study_id for r in first.rows}
    assert not list((tmp_path / "out").rglob(".*tmp-*"))


def test_gantry_tilt_resampled_or_quarantined_in_strict(tmp_path: Path, convert) -> None:
    # positions sheared along y by 0.5 mm per 2.5 mm slice (~11 degrees), as scanners write tilted series
    fixture = write_ct_series(
        tmp_path / "in", n_slices=6, shear_per_slice=(0.0, 0.4, 0.0), rows=32, columns=32, pixel_spacing=(0.8, 0.8)
    )
    summary = convert(tmp_path / "in", tmp_path / "out")
    row = row_for(summary, fixture.study_uid)
    assert row.status == "ok" and row.resampled and any("gantry tilt" in w for w in row.warnings)
    image = nib.load(tmp_path / "out" / row.volume_path)
    np.testing.assert_allclose(image.affine, canonical_expected(fixture).affine, atol=1e-4)  # orthogonal grid
    data = np.asanyarray(image.dataobj)
    # slice k sits k * 0.4 mm = k * 0.5 rows further along +y (LPS): on the orthogonal grid its content
    # moves down by 0.5 k rows; k = 2 is a whole-row shift, so values are exact; the vacated row is air
    discovery = scan_dicom_tree(tmp_path / "in")
    volume = assemble_series(next(iter(discovery.studies[0].series.values())).slices)
    assert np.array_equal(volume.hu_kji[2, 1:, :], fixture.hu_kji[2, :-1, :])
    assert np.all(volume.hu_kji[2, 0, :] == -1024)
    assert np.array_equal(volume.hu_kji[0], fixture.hu_kji[0])
    strict = convert(tmp_path / "in", tmp_path / "out_strict", strict=True)
    assert "strict mode: gantry tilt" in row_for(strict, fixture.study_uid).reason
    assert data.shape == (32, 32, 6)


def test_missing_slice_resampled_linear(tmp_path: Path) -> None:
    fixture = write_ct_series(tmp_path / "in", n_slices=8, skip_slices=(4,))
    source = fixture.hu_kji
    discovery = scan_dicom_tree(tmp_path / "in")
    slices = next(iter(discovery.studies[0].series.values())).slices
    volume = assemble_series(slices)
    assert volume.hu_kji.shape[0] == 8 and volume.resampled
    assert np.array_equal(volume.hu_kji[:4], source[:4]) and np.array_equal(volume.hu_kji[5:], source[4:])
    midpoint = np.rint((source[3].astype(float) + source[4]) / 2)
    assert np.abs(volume.hu_kji[4] - midpoint).max() <= 1
    with pytest.raises(AssemblyError, match="non-uniform slice spacing"):
        assemble_series(slices, strict=True)


def test_parallel_workers_match_serial(tmp_path: Path, convert, monkeypatch: pytest.MonkeyPatch) -> None:
    from preprocessing import convert as convert_module

    monkeypatch.setattr(convert_module, "CONVERT_POOL_MIN_VOXELS", 0)  # a pool even for these small studies
    fixtures = [write_ct_series(tmp_path / "in" / f"s{i}", n_slices=4, seed=i) for i in range(3)]
    serial = convert(tmp_path / "in", tmp_path / "serial", workers=1)
    parallel = convert(tmp_path / "in", tmp_path / "parallel", workers=2)
    assert parallel.n_ok == 3
    for fixture in fixtures:
        a, b = row_for(serial, fixture.study_uid), row_for(parallel, fixture.study_uid)
        assert a.source_hash == b.source_hash and a.shape == b.shape
        assert np.array_equal(
            nib.load(tmp_path / "serial" / a.volume_path).get_fdata(),
            nib.load(tmp_path / "parallel" / b.volume_path).get_fdata(),
        )


def test_small_studies_convert_without_a_pool(tmp_path: Path, convert, monkeypatch: pytest.MonkeyPatch) -> None:
    from preprocessing import conversion

    def no_pool(*args: object, **kwargs: object) -> None:
        raise AssertionError("a study pool was spawned for a few small studies")

    monkeypatch.setattr(conversion, "ProcessPoolExecutor", no_pool)
    for i in range(3):
        write_ct_series(tmp_path / "in" / f"s{i}", n_slices=4, seed=i)
    assert convert(tmp_path / "in", tmp_path / "out", workers=2).n_ok == 3


def test_cli_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str], repo_root: Path) -> None:
    from fvlm.cli import main

    write_ct_series(tmp_path / "in", n_slices=10)
    code = main(
        [
            "--params",
            str(repo_root / "params.yaml"),
            "convert",
            str(tmp_path / "in"),
            str(tmp_path / "out"),
            "--workers",
            "1",
            "--output-extension",
            ".nii",
        ]
    )
    assert code == 0
    assert "1 ok" in capsys.readouterr().out
    assert len(list((tmp_path / "out" / "volumes").glob("*.nii"))) == 1
    assert (
        main(["--params", str(repo_root / "params.yaml"), "convert", str(tmp_path / "missing"), str(tmp_path / "o")])
        == 2
    )


@pytest.mark.parametrize(("pixel_representation", "bits_stored"), [(0, 12), (1, 12), (1, 16), (0, 16)])
def test_native_fast_path_matches_pydicom(tmp_path: Path, pixel_representation: int, bits_stored: int) -> None:
    import pydicom

    from preprocessing.volume_assembly import read_native_pixels

    fixture = write_ct_series(
        tmp_path / "in",
        n_slices=3,
        pixel_representation=pixel_representation,
        bits_stored=bits_stored,
        intercept=-1024 if pixel_representation == 0 else 0,
    )
    if bits_stored < 16 and pixel_representation == 0:  # plant garbage in the bits above BitsStored
        ds = pydicom.dcmread(fixture.files[0])
        ds.PixelData = (np.frombuffer(ds.PixelData, dtype=np.uint16) | np.uint16(0xF000)).tobytes()
        ds.save_as(fixture.files[0])
    for header in next(iter(scan_dicom_tree(tmp_path / "in").studies[0].series.values())).slices:
        fast = read_native_pixels(header)
        assert fast is not None
        assert np.array_equal(fast, pydicom.dcmread(header.path).pixel_array)
    rle = write_ct_series(tmp_path / "in2", n_slices=3, transfer_syntax="1.2.840.10008.1.2.5")
    header = next(iter(scan_dicom_tree(rle.folder).studies[0].series.values())).slices[0]
    assert read_native_pixels(header) is None  # compressed: decoded by pydicom instead


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32])
@pytest.mark.parametrize(
    ("slope", "intercept", "pad"),
    [
        (1.0, -1024.0, None),
        (1.0, 0.0, (0, 0)),
        (1.0, -1024.0, (0, 5)),
        (0.5, -1000.5, None),
        (1.0, 30000.0, None),
        (2.0, -2048.0, (7, 7)),
    ],
)
def test_hu_conversion_paths_agree(dtype, slope: float, intercept: float, pad) -> None:
    from preprocessing.volume_assembly import _to_hu

    rng = np.random.default_rng(0)
    info = np.iinfo(np.int16) if dtype == np.int32 else np.iinfo(dtype)
    raw = rng.integers(info.min, info.max, size=(16, 16), endpoint=True).astype(dtype)
    raw[0, :6] = [0, 5, 7, info.min, info.max, 1]
    expected = np.rint(raw.astype(np.float64) * slope + intercept)
    if pad is not None:
        expected[(raw >= pad[0]) & (raw <= pad[1])] = -1024
    expected = np.clip(expected, -1024, 32767).astype(np.int16)
    out = np.empty(raw.shape, dtype=np.int16)
    _to_hu(raw, slope, intercept, pad, out)
    assert np.array_equal(out, expected)


def test_parallel_gzip_writer_matches_nibabel(tmp_path: Path) -> None:
    import SimpleITK as sitk

    from preprocessing.volume_writer import GZIP_CHUNK_BYTES, write_ras_nifti

    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 2000, size=(9, 40, 30)).astype(np.int16)
    affine = np.diag([-0.8, -0.7, 2.5, 1.0])
    import preprocessing.volume_writer as writer

    writer.GZIP_CHUNK_BYTES = 3 * 40 * 30 * 2  # several gzip members
    try:
        write_ras_nifti(hu, affine, tmp_path / "threads.nii.gz", gzip_threads=2)
    finally:
        writer.GZIP_CHUNK_BYTES = GZIP_CHUNK_BYTES
    write_ras_nifti(hu, affine, tmp_path / "nibabel.nii.gz", gzip_threads=1)
    a, b = nib.load(tmp_path / "threads.nii.gz"), nib.load(tmp_path / "nibabel.nii.gz")
    assert a.header.binaryblock == b.header.binaryblock
    assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    itk = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "threads.nii.gz")))  # (z, y, x)
    assert np.array_equal(itk, np.asanyarray(a.dataobj).transpose(2, 1, 0))


def test_demo_cohort_converts_onto_mask_grid(tmp_path: Path, convert) -> None:
    """Integration with the synthetic cohort (`fvlm demo-data`): keys match reports.csv, grids match masks."""
    import csv

    synthetic = pytest.importorskip("synthetic.cohort")
    from core.privacy import pseudonym

    synthetic.generate_cohort(tmp_path / "demo", studies=2, seed=0, size="demo", workers=1)
    summary = convert(tmp_path / "demo" / "dicom", tmp_path / "out", min_slices=10)
    assert summary.n_ok == summary.n_studies == 2
    keys = [row["study_key"] for row in csv.DictReader(open(tmp_path / "demo" / "reports.csv"))]
    by_id = {row.study_id: row for row in summary.rows}
    for key in keys:
        row = by_id[pseudonym(key, SALT, kind="study")]
        volume = nib.load(tmp_path / "out" / row.volume_path)
        mask = nib.load(tmp_path / "demo" / "masks" / f"{key}.nii.gz")
        assert volume.shape == mask.shape
        np.testing.assert_allclose(volume.affine, mask.affine, atol=1e-4)
        excluded = [a["excluded"] for a in json.loads(row.alternatives)]
        assert any("localizer" in (e or "") for e in excluded)


# studies.parquet's columns as declared by hand before the schema was derived from ManifestRow (core.records)
def manifest_columns_before() -> list[tuple[str, Any]]:
    import pyarrow as pa

    text, int64, float64 = pa.string(), pa.int64(), pa.float64()
    return [
        ("study_id", text),
        ("patient_id", text),
        ("status", text),
        ("reason", text),
        ("series_id", text),
        ("series_description", text),
        ("series_number", int64),
        ("convolution_kernel", text),
        ("selection_policy", text),
        ("alternatives", text),
        ("slices", int64),
        ("n_input_slices", int64),
        ("shape", pa.list_(int64)),
        ("spacing", pa.list_(float64)),
        ("affine", pa.list_(float64)),
        ("warnings", pa.list_(text)),
        ("resampled", pa.bool_()),
        ("n_input_files", int64),
        ("source_hash", text),
        ("config_hash", text),
        ("volume_path", text),
        ("transfer_syntaxes", pa.list_(text)),
        ("hu_min", int64),
        ("hu_max", int64),
        ("input_format", text),
        ("rescale_decision", text),
        ("converter_version", text),
    ]


def test_written_manifest_schema_is_the_one_declared_before_derivation(tmp_path: Path) -> None:
    """The derived schema keeps every earlier column (name, type, order, nullable) and the metadata, and
    writes the same bytes; a field added to ManifestRow becomes a column by itself (after the earlier ones)."""
    from dataclasses import asdict, fields

    import pyarrow as pa

    from preprocessing.conversion import CONVERTER_VERSION, ManifestRow, manifest_schema, write_manifest

    before = pa.schema(
        manifest_columns_before(),
        metadata={
            b"fvlm.axis_order": b"shape and spacing are (z, y, x); NIfTI arrays on disk are (x, y, z), RAS+",
            b"fvlm.converter_version": CONVERTER_VERSION.encode(),
        },
    )
    schema = manifest_schema()
    assert [schema.field(i) for i in range(len(before))] == list(before)
    assert schema.metadata == before.metadata
    assert schema.names == [f.name for f in fields(ManifestRow) if f.name not in ("seconds", "reused")]
    row = ManifestRow(study_id="s1", patient_id=None, status="ok", shape=[2, 3, 4])
    path = tmp_path / "studies.parquet"
    write_manifest([row], path)
    assert pq.read_table(path).to_pylist()[0]["shape"] == [2, 3, 4]
    if schema.equals(before, check_metadata=True):  # no column added since the derivation: the same bytes
        by_hand = tmp_path / "by-hand.parquet"
        pq.write_table(pa.Table.from_pylist([asdict(row)], schema=before), by_hand)
        assert path.read_bytes() == by_hand.read_bytes()


def test_manifest_tables_built_from_buffers_write_pyarrows_bytes(tmp_path: Path) -> None:
    """write_manifest / write_unreadable build their Arrow columns from buffers (no pandas import); the Parquet
    file must be byte for byte what ``pa.Table.from_pylist`` gives."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from preprocessing.conversion import ManifestRow, arrow_table, manifest_schema, write_manifest
    from preprocessing.dicom_discovery import UnreadableFile

    rows = [
        ManifestRow(study_id="st_b", patient_id=None, status="quarantined", reason="séries ünreadable ✓"),
        ManifestRow(
            study_id="st_a",
            patient_id="pa_1",
            status="ok",
            series_number=3,
            shape=[3, 4, 5],
            spacing=[2.5, 0.7, 0.8],
            affine=[float(v) / 3 for v in range(16)],
            warnings=["one", "", "three"],
            resampled=True,
            volume_path="volumes/st_a.nii.gz",
            transfer_syntaxes=["1.2.840.10008.1.2.1"],
            hu_min=-1024,
            hu_max=3071,
        ),
        ManifestRow(study_id="st_c", patient_id="pa_2", status="ok", series_number=None, hu_min=None, warnings=[]),
    ]
    write_manifest(rows, tmp_path / "ours.parquet")
    stored = [name for name in manifest_schema().names]
    records = [{name: getattr(row, name) for name in stored} for row in sorted(rows, key=lambda r: r.study_id)]
    pq.write_table(pa.Table.from_pylist(records, schema=manifest_schema()), tmp_path / "reference.parquet")
    assert (tmp_path / "ours.parquet").read_bytes() == (tmp_path / "reference.parquet").read_bytes()
    for items in ([], [UnreadableFile("a/b", "zero-byte file"), UnreadableFile("c", "junk")]):
        from core.records import arrow_schema

        schema = arrow_schema(UnreadableFile)
        plain = [{"relative_path": item.relative_path, "reason": item.reason} for item in items]
        assert arrow_table(plain, schema).equals(pa.Table.from_pylist(plain, schema=schema))
    assert arrow_table([], manifest_schema()).num_rows == 0


def test_converting_a_plain_series_imports_neither_pydicom_nor_pandas_nor_scipy_ndimage(tmp_path: Path) -> None:
    """The one-series cost is mostly imports: a native series needs none of these (lean headers, native pixels,
    manifests from buffers); nibabel's own DICOM extension still works afterwards (pydicom imported then)."""
    import subprocess
    import sys

    write_ct_series(tmp_path / "in" / "s", n_slices=4)
    code = (
        "import sys; from pathlib import Path\n"
        "from preprocessing.convert import ConvertJob, ConvertSettings, run_convert\n"
        f"s = run_convert(ConvertJob(input_dir=Path({str(tmp_path / 'in')!r}),"
        f" output_dir=Path({str(tmp_path / 'out')!r}), workers=2, settings=ConvertSettings(salt='s', min_slices=3)))\n"
        "assert s.n_ok == 1, s.describe()\n"
        "print(sorted(m for m in ('pydicom', 'pandas', 'scipy.ndimage') if m in sys.modules))\n"
        "import nibabel as nib\n"
        "extension = nib.nifti1.extension_codes.handler[2](2, b'')\n"
        "print(type(extension.get_content()).__name__, 'pydicom' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "Dataset True"]
