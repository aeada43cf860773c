"""The synthetic cohort generator (``fvlm demo-data``), checked against software this project did not write:
pydicom reads every file, dcm2niix converts every thin series onto the mask's grid with the phantom's HU.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.io import sha256_file

SEED = 7
STUDIES = 4


def _dcm2niix() -> str | None:
    candidate = Path(sys.executable).with_name("dcm2niix")
    if candidate.is_file():
        return str(candidate)
    try:
        import dcm2niix  # type: ignore[import-not-found]

        return str(dcm2niix.bin)
    except (ImportError, AttributeError):
        return shutil.which("dcm2niix")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synthetic import generate_cohort

    out = tmp_path_factory.mktemp("demo") / "cohort"
    summary = generate_cohort(out, studies=STUDIES, seed=SEED, size="demo", workers=2)
    assert summary.studies == STUDIES
    return out


@pytest.fixture(scope="module")
def cohort_json(cohort: Path) -> dict:
    return json.loads((cohort / "cohort.json").read_text())


@pytest.fixture(scope="module")
def phantoms(cohort_json: dict) -> dict:
    from synthetic import make_phantom

    return {s["index"]: make_phantom(SEED, s["index"], "demo") for s in cohort_json["studies"]}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------ layout


def test_cohort_layout_and_csv_columns(cohort: Path, cohort_json: dict) -> None:
    from core.anatomy_sets import CTRATE_LABELS

    keys = [s["study_key"] for s in cohort_json["studies"]]
    assert len(set(keys)) == STUDIES
    for record in cohort_json["studies"]:
        study_dir = cohort / "dicom" / f"study_{record['index']:04d}"
        assert sorted(p.name for p in study_dir.iterdir()) == ["series_1", "series_2", "series_3"]
        assert (cohort / record["mask"]).is_file()
        thin = next(s for s in record["series"] if s["series_number"] == 2)
        assert len(list((cohort / thin["folder"]).glob("*.dcm"))) == record["shape_zyx"][0]
    reports = _read_csv(cohort / "reports.csv")
    assert list(reports[0]) == ["study_key", "Findings", "Impression"]
    assert [r["study_key"] for r in reports] == keys
    labels = _read_csv(cohort / "labels.csv")
    assert list(labels[0]) == ["study_key", *CTRATE_LABELS]
    assert all(value in ("0", "1") for row in labels for name, value in row.items() if name != "study_key")


def test_labels_csv_agrees_with_cohort_json_and_lesions(cohort: Path, cohort_json: dict) -> None:
    from core.anatomy_sets import CTRATE_LABELS

    rows = {r["study_key"]: r for r in _read_csv(cohort / "labels.csv")}
    for record in cohort_json["studies"]:
        row = rows[record["study_key"]]
        drawn = {lesion["label"] for lesion in record["lesions"]}
        for name in CTRATE_LABELS:
            assert int(row[name]) == record["labels"][name] == int(name in drawn), (record["index"], name)
        assert record["normal"] == (not drawn)


def test_reports_mention_every_drawn_lesion_with_matching_details(cohort: Path, cohort_json: dict) -> None:
    from synthetic.reports import LOBE_PHRASES, mentioned

    reports = {r["study_key"]: r for r in _read_csv(cohort / "reports.csv")}
    for record in cohort_json["studies"]:
        findings = reports[record["study_key"]]["Findings"]
        nodules = sorted((x for x in record["lesions"] if x["label"] == "Lung nodule"), key=lambda n: -n["diameter_mm"])
        many = len(nodules) > 4  # learnable: the largest, then "N others measuring up to X mm ... in the lobes"
        if many:
            assert f"{len(nodules) - 1} others measuring up to" in findings
        for lesion in record["lesions"]:
            assert mentioned(lesion["label"], findings), (lesion["label"], findings)
            if lesion["label"] == "Lung nodule":
                if not many or lesion is nodules[0]:
                    assert f"{max(int(round(lesion['diameter_mm'])), 1)} mm" in findings
                assert any(phrase in findings for phrase in LOBE_PHRASES[lesion["lobe"]])
            if lesion["label"] == "Pleural effusion":
                assert lesion["side"] in findings or "Bilateral" in findings or "both" in findings
        if record["normal"]:
            assert (
                "No pleural effusion" in findings
                or "Pleural effusion-thickening was not" in findings
                or "There is no pleural effusion" in findings
            )


# ------------------------------------------------------------------------------------------- DICOM


def test_pydicom_reads_every_file_and_hu_equals_phantom(cohort: Path, cohort_json: dict, phantoms: dict) -> None:
    import pydicom

    for record in cohort_json["studies"]:
        phantom = phantoms[record["index"]]
        variant = record["dicom_variant"]
        for series in record["series"]:
            files = sorted((cohort / series["folder"]).glob("*.dcm"))
            assert len(files) == series["slices"]
            slices = []
            for path in files:
                ds = pydicom.dcmread(path)
                assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
                assert ds.StudyInstanceUID == record["study_key"]
                assert ds.SeriesInstanceUID == series["series_uid"]
                assert ds.PatientPosition == "HFS"
                expected_ts = (
                    "1.2.840.10008.1.2" if variant["transfer_syntax"] == "implicit_vr_le" else "1.2.840.10008.1.2.1"
                )
                assert ds.file_meta.TransferSyntaxUID == expected_ts
                pixels = ds.pixel_array
                if series["series_number"] == 1:
                    assert "LOCALIZER" in ds.ImageType
                    assert [float(x) for x in ds.ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]
                    continue
                assert ds.PixelRepresentation == variant["pixel_representation"]
                assert float(ds.RescaleIntercept) == variant["rescale_intercept"] and float(ds.RescaleSlope) == 1
                assert [float(x) for x in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
                slices.append((float(ds.ImagePositionPatient[2]), pixels.astype(np.int32) + int(ds.RescaleIntercept)))
            if series["series_number"] == 2:
                assert "AXIAL" in ds.ImageType and "ORIGINAL" in ds.ImageType
                slices.sort(key=lambda item: item[0])  # readers must sort by position, not file or instance order
                volume = np.stack([hu for _, hu in slices])  # (k, rows=posterior, cols=left) = native order
                assert np.array_equal(volume, phantom.native_hu())


def test_dcm2niix_converts_thin_series_onto_mask_grid_with_phantom_hu(
    cohort: Path, cohort_json: dict, phantoms: dict, tmp_path: Path
) -> None:
    import nibabel as nib

    binary = _dcm2niix()
    if binary is None:
        pytest.skip("dcm2niix not installed")
    for record in cohort_json["studies"]:
        thin = next(s for s in record["series"] if s["series_number"] == 2)
        out = tmp_path / f"study_{record['index']}"
        out.mkdir()
        result = subprocess.run(
            [binary, "-z", "n", "-b", "n", "-f", "thin", "-o", str(out), str(cohort / thin["folder"])],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        converted = sorted(out.glob("*.nii"))
        assert len(converted) == 1, result.stdout
        image = nib.as_closest_canonical(nib.load(converted[0]))
        mask = nib.as_closest_canonical(nib.load(cohort / record["mask"]))
        assert image.shape == mask.shape
        voxel = min(record["spacing_zyx_mm"])
        assert np.abs(image.affine - mask.affine).max() < 0.01 * voxel
        assert np.allclose(mask.affine, np.asarray(record["affine_ras"]), atol=1e-4)
        hu_xyz = phantoms[record["index"]].hu_zyx.transpose(2, 1, 0)
        assert np.array_equal(image.get_fdata(), hu_xyz)
        assert np.array_equal(np.asarray(mask.dataobj), phantoms[record["index"]].labels_zyx.transpose(2, 1, 0))


def test_phi_sidecar_lists_every_planted_value(cohort: Path, cohort_json: dict) -> None:
    import pydicom

    from synthetic.phi import DICOM_PHI_FIELDS

    planted = json.loads((cohort / "phi_planted.json").read_text())
    reports = {r["study_key"]: r for r in _read_csv(cohort / "reports.csv")}
    for record in cohort_json["studies"]:
        phi = planted["studies"][record["study_key"]]
        thin = next(s for s in record["series"] if s["series_number"] == 2)
        ds = pydicom.dcmread(next((cohort / thin["folder"]).glob("*.dcm")))
        for field in DICOM_PHI_FIELDS:
            assert str(ds.get(field)) == phi[field], field
        text = reports[record["study_key"]]["Findings"] + " " + reports[record["study_key"]]["Impression"]
        assert (phi["report_prior_date"] in text) == phi["in_report"]["prior_date"]
        assert (phi["report_physician"] in text) == phi["in_report"]["physician"]
        for value in phi["search_values"]:
            assert value in planted["all_search_values"]
        # nothing planted leaks into the public ground truth
        public = json.dumps(record)
        assert not any(value in public for value in phi["search_values"])


def test_same_seed_gives_same_bytes_and_prefix_property(cohort: Path, tmp_path: Path) -> None:
    from synthetic import generate_cohort

    again = tmp_path / "again"
    generate_cohort(again, studies=2, seed=SEED, size="demo", workers=1)
    compared = 0
    for path in sorted((again / "dicom").rglob("*.dcm")) + sorted((again / "masks").glob("*.nii.gz")):
        twin = cohort / path.relative_to(again)
        assert sha256_file(path) == sha256_file(twin), path
        compared += 1
    assert compared > 100
    for name in ("reports.csv", "labels.csv"):
        short = (again / name).read_text().splitlines()
        long = (cohort / name).read_text().splitlines()
        assert short == long[: len(short)]


# ---------------------------------------------------------------------------------------- phantom


def test_phantom_anatomy_labels_hu_and_ras_orientation() -> None:
    from core.anatomy_sets import totalseg_name_to_id
    from synthetic import make_phantom

    ids = totalseg_name_to_id()
    phantom = make_phantom(3, 0, "demo", labels={})
    assert phantom.hu_zyx.dtype == np.int16 and phantom.labels_zyx.dtype == np.uint8
    assert phantom.hu_zyx.shape == phantom.labels_zyx.shape
    assert np.all(np.diag(phantom.affine_ras)[:3] > 0)
    present = set(np.unique(phantom.labels_zyx).tolist())
    required = [
        "lung_upper_lobe_left",
        "lung_lower_lobe_left",
        "lung_upper_lobe_right",
        "lung_middle_lobe_right",
        "lung_lower_lobe_right",
        "trachea",
        "esophagus",
        "heart",
        "atrial_appendage_left",
        "aorta",
        "sternum",
        "costal_cartilages",
        "spinal_cord",
        *(f"vertebrae_T{k}" for k in range(1, 13)),
        *(f"rib_{side}_{k}" for side in ("left", "right") for k in range(1, 13)),
    ]
    assert not [name for name in required if ids[name] not in present]

    def median_hu(name: str) -> float:
        return float(np.median(phantom.hu_zyx[phantom.labels_zyx == ids[name]]))

    assert -900 < median_hu("lung_upper_lobe_right") < -780
    assert 20 < median_hu("heart") < 60 and 20 < median_hu("aorta") < 60
    assert median_hu("vertebrae_T6") > 150
    assert phantom.hu_zyx[-1, -1, -1] < -900  # air in the corner

    def centroid(name: str) -> np.ndarray:
        return np.argwhere(phantom.labels_zyx == ids[name]).mean(axis=0)

    # RAS (z, y, x): z up, y anterior, x toward the patient's right
    assert centroid("lung_upper_lobe_right")[0] > centroid("lung_lower_lobe_right")[0]
    assert centroid("sternum")[1] > centroid("vertebrae_T6")[1]
    assert centroid("lung_upper_lobe_right")[2] > centroid("lung_upper_lobe_left")[2]


def test_lesions_change_only_the_voxels_they_claim() -> None:
    from scipy import ndimage

    from synthetic import make_phantom
    from synthetic.anatomy import lung_label_ids

    base = make_phantom(11, 2, "demo", labels={})
    nodule = make_phantom(11, 2, "demo", labels={"Lung nodule": 1, "Emphysema": 1, "Consolidation": 1})
    assert np.array_equal(base.labels_zyx, nodule.labels_zyx)  # lesions are image content, not mask classes
    changed = np.abs(base.hu_zyx.astype(np.int32) - nodule.hu_zyx) > 0
    # the partial-volume blur (radius 2 voxels) may carry a lesion's edge just past the lung border
    lungs = ndimage.binary_dilation(np.isin(base.labels_zyx, lung_label_ids()), np.ones((3, 3, 3), bool), iterations=2)
    assert changed.any() and not (changed & ~lungs).any()
    for lesion in nodule.lesions:
        if lesion["label"] == "Lung nodule":
            z, y, x = lesion["center_zyx"]
            assert nodule.labels_zyx[z, y, x] in lung_label_ids()
            assert nodule.hu_zyx[z, y, x] > base.hu_zyx[z, y, x] + 200  # solid nodule in aerated lung

    effusion = make_phantom(11, 2, "demo", labels={"Pleural effusion": 1})
    moved = base.labels_zyx != effusion.labels_zyx
    assert moved.any()
    assert np.isin(base.labels_zyx[moved], lung_label_ids()).all() and (effusion.labels_zyx[moved] == 0).all()
    assert 0 <= float(np.median(effusion.hu_zyx[moved])) <= 25


@pytest.mark.parametrize(
    ("difficulty", "normal_range", "prevalence_range"),
    [("paper", (0.25, 0.35), (0.05, 0.40)), ("learnable", (0.20, 0.30), (0.18, 0.40))],
)
def test_label_sampling_prevalence_and_normal_fraction(
    difficulty: str, normal_range: tuple[float, float], prevalence_range: tuple[float, float]
) -> None:
    from core.anatomy_sets import CTRATE_LABELS
    from synthetic.lesions import sample_labels

    draws = [sample_labels(np.random.default_rng(i), difficulty) for i in range(3000)]
    normal = np.mean([not any(d.values()) for d in draws])
    assert normal_range[0] <= normal <= normal_range[1]
    for name in CTRATE_LABELS:
        assert prevalence_range[0] <= np.mean([d[name] for d in draws]) <= prevalence_range[1], name


def test_paper_difficulty_is_the_previous_generator_and_learnable_lesions_are_larger() -> None:
    from synthetic import make_phantom

    forced = {"Lung nodule": 1, "Lymphadenopathy": 1}
    paper = make_phantom(4, 1, "demo", labels=forced, difficulty="paper")
    learnable = make_phantom(4, 1, "demo", labels=forced, difficulty="learnable")
    assert np.array_equal(paper.labels_zyx, learnable.labels_zyx)  # same patient, same anatomy

    def size(phantom, label):
        return sum(x.get("voxels", 0) for x in phantom.lesions if x["label"] == label)

    for label in forced:
        assert size(learnable, label) > 2 * size(paper, label) > 0, label
    with pytest.raises(ValueError, match="unknown difficulty"):
        make_phantom(4, 1, "demo", difficulty="hard")


# sha256 (first 16 hex) of hu + labels of `paper` phantom 3 with every finding forced: the generator as it was
# before the `learnable` difficulty (GENERATOR_VERSION 1); `learnable` changes must not move a `paper` draw
PAPER_PHANTOM_3_ALL_FINDINGS = "1b869fbef5ef9479"


def test_paper_phantom_is_byte_identical_to_the_version_1_generator() -> None:
    import hashlib

    from core.anatomy_sets import CTRATE_LABELS
    from synthetic import make_phantom

    phantom = make_phantom(3, 1, "demo", labels={name: 1 for name in CTRATE_LABELS}, difficulty="paper")
    digest = hashlib.sha256(phantom.hu_zyx.tobytes() + phantom.labels_zyx.tobytes()).hexdigest()[:16]
    assert digest == PAPER_PHANTOM_3_ALL_FINDINGS


def test_learnable_version_2_findings_diffuse_emphysema_plaques_and_visible_leads() -> None:
    from core.anatomy_sets import totalseg_name_to_id
    from synthetic import make_phantom

    ids = dict(totalseg_name_to_id())
    base = make_phantom(5, 1, "demo", labels={}, difficulty="learnable")

    emphysema = make_phantom(5, 1, "demo", labels={"Emphysema": 1}, difficulty="learnable")
    lobes = [ids[name] for name in emphysema.lesions[0]["lobes"]]
    parenchyma = np.isin(base.labels_zyx, lobes) & (base.hu_zyx < -500) & (emphysema.hu_zyx > -990)
    drop = float(np.median(base.hu_zyx[parenchyma] - emphysema.hu_zyx[parenchyma]))
    assert 60 <= drop <= 120  # the whole lobe darker (low attenuation), not only the bullae

    calcified = make_phantom(
        5, 1, "demo", labels={"Coronary artery wall calcification": 1, "Arterial wall calcification": 1}
    )
    coronary = next(x for x in calcified.lesions if x["kind"] == "coronary_calcification")
    assert coronary["plaques"] == len(coronary["vessels"])
    assert int((calcified.hu_zyx > 600).sum()) > int((base.hu_zyx > 600).sum())

    paper_device = make_phantom(6, 1, "demo", labels={"Medical material": 1}, difficulty="paper")
    learnable_device = make_phantom(6, 1, "demo", labels={"Medical material": 1}, difficulty="learnable")
    assert paper_device.lesions[0]["kind"] == learnable_device.lesions[0]["kind"] == "pacemaker"
    assert learnable_device.lesions[0]["voxels"] > 1.5 * paper_device.lesions[0]["voxels"]  # the thicker lead


def test_learnable_version_3_bulky_nodes_multiple_nodules_and_lobar_consolidation() -> None:
    from synthetic import make_phantom
    from synthetic.difficulty import lesion_spec

    spec = lesion_spec("learnable")
    voxel_mm3 = 3.1585 * 3.1585 * 5.0  # the demo phantom grid
    smallest_node = 4.0 / 3.0 * np.pi * (spec["node_short_mm"][0] / 2) ** 3 / voxel_mm3
    for index in range(1, 4):  # v2 left some nodes a few voxels between the mediastinal organs
        phantom = make_phantom(7, index, "demo", labels={"Lymphadenopathy": 1}, difficulty="learnable")
        nodes = [x for x in phantom.lesions if x["kind"] == "enlarged_lymph_node"]
        assert len(nodes) >= spec["node_count"][0] - 1 and nodes
        assert np.median([x["voxels"] for x in nodes]) > 0.5 * smallest_node, index
        nodules = make_phantom(7, index, "demo", labels={"Lung nodule": 1}, difficulty="learnable").lesions
        assert len(nodules) >= 2  # a dominant mass + satellites
    paper = make_phantom(7, 1, "demo", labels={"Consolidation": 1}, difficulty="paper").lesions[0]
    lobar = make_phantom(7, 1, "demo", labels={"Consolidation": 1}, difficulty="learnable").lesions[0]
    assert lobar["size_mm"] >= 65 > paper["size_mm"] and lobar["voxels"] > 2 * paper["voxels"]


def test_learnable_version_4_fibrotic_reticulation_more_nodules_and_nodes() -> None:
    from core.anatomy_sets import totalseg_name_to_id
    from synthetic import make_phantom
    from synthetic.difficulty import lesion_spec

    ids = dict(totalseg_name_to_id())
    base = make_phantom(8, 1, "demo", labels={}, difficulty="learnable")
    fibrotic = make_phantom(8, 1, "demo", labels={"Pulmonary fibrotic sequela": 1}, difficulty="learnable")
    lesion = fibrotic.lesions[0]
    assert lesion["kind"] == "fibrotic_bands" and lesion["reticulation_voxels"] > 1000
    lobe = (base.labels_zyx == ids[lesion["lobe"]]) & (base.hu_zyx < -500)
    gain = fibrotic.hu_zyx[lobe].astype(np.float32) - base.hu_zyx[lobe]
    raised = gain > 30
    assert raised.mean() > 0.2  # a rim of the lobe, not only the bands
    assert 60 <= float(np.median(gain[raised])) <= 180
    paper = make_phantom(8, 1, "demo", labels={"Pulmonary fibrotic sequela": 1}, difficulty="paper").lesions[0]
    assert "reticulation_voxels" not in paper  # `paper` keeps the bands alone

    spec = lesion_spec("learnable")
    nodules = make_phantom(8, 2, "demo", labels={"Lung nodule": 1}, difficulty="learnable").lesions
    assert len(nodules) >= spec["nodule_count"][0] - 1 >= 2
    nodes = make_phantom(8, 2, "demo", labels={"Lymphadenopathy": 1}, difficulty="learnable").lesions
    assert len(nodes) >= spec["node_count"][0] - 1 >= 3


def test_cli_demo_data_writes_a_cohort(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fvlm.cli import main

    code = main(["demo-data", str(tmp_path / "cli"), "--studies", "1", "--seed", "5", "--workers", "1"])
    assert code == 0
    assert "1 studies" in capsys.readouterr().out
    assert (tmp_path / "cli" / "labels.csv").is_file()
    assert main(["demo-data", str(tmp_path / "bad"), "--studies", "0"]) == 2


@pytest.mark.slow
def test_real_size_phantom_is_full_resolution() -> None:
    from synthetic import make_phantom

    phantom = make_phantom(0, 0, "real")
    assert phantom.hu_zyx.shape[1:] == (512, 512)
    assert phantom.spacing_zyx[0] == 1.25 and 230 <= phantom.hu_zyx.shape[0] <= 400


def test_follow_up_studies_share_the_patient_identity_and_body_size() -> None:
    from synthetic.patients import patient_index
    from synthetic.phantom import make_phantom, study_rngs
    from synthetic.phi import patient_phi, study_phi

    follow_ups = [i for i in range(1, 60) if patient_index(SEED, i) != i]
    assert follow_ups and len(follow_ups) < 30
    index = follow_ups[0]
    first = patient_index(SEED, index)
    assert (
        make_phantom(SEED, first, "demo", draw=False).plan["scale"]
        == make_phantom(SEED, index, "demo", draw=False).plan["scale"]
    )
    phi_first = study_phi(study_rngs(SEED, first)["report"], patient_phi(SEED, first))
    phi_follow = study_phi(study_rngs(SEED, index)["report"], patient_phi(SEED, patient_index(SEED, index)))
    assert phi_first["PatientID"] == phi_follow["PatientID"] and phi_first["PatientName"] == phi_follow["PatientName"]
    assert phi_first["AccessionNumber"] != phi_follow["AccessionNumber"]
