"""Small synthetic CT DICOM series written with pydicom, with the HU volume they must convert to.

``write_ct_series`` writes one series (single-frame files, any transfer syntax pydicom can encode)
and returns a :class:`SeriesFixture` holding the expected ``hu_kji`` (slice order along the normal,
rows, columns) and the geometry, so tests can check values and affines exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

PHI = {
    "PatientName": "Zyxwvut^Quentina",
    "PatientID": "MRN-99887766",
    "PatientBirthDate": "19510317",
    "AccessionNumber": "ACC55443322",
    "InstitutionName": "Saint Qwerty Hospital",
    "ReferringPhysicianName": "Plonk^Bartholomew",
    "StudyDate": "20240229",
}


@dataclass
class SeriesFixture:
    folder: Path
    files: list[Path]
    study_uid: str
    series_uid: str
    patient_id: str
    hu_kji: np.ndarray  # expected HU, slices ordered along the normal
    origin_lps: tuple[float, float, float]  # IPP of the first slice along the normal
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing)
    slice_spacing: float
    extras: dict = field(default_factory=dict)


def new_uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid()


def phantom_hu(n_slices: int, rows: int, columns: int, seed: int = 0) -> np.ndarray:
    """A distinct HU pattern per voxel (air background, a 'body' disc, a gradient), int16."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(np.arange(n_slices), np.arange(rows), np.arange(columns), indexing="ij")
    body = ((j - rows / 2) ** 2 + (i - columns / 2) ** 2) < (min(rows, columns) * 0.4) ** 2
    hu = np.where(body, 40 + 7 * k + 3 * j - 2 * i, -1000).astype(np.int32)
    hu += rng.integers(-5, 6, size=hu.shape)
    return np.clip(hu, -1024, 3071).astype(np.int16)


def write_ct_series(
    folder: Path,
    *,
    n_slices: int = 12,
    rows: int = 24,
    columns: int = 20,
    pixel_spacing: tuple[float, float] = (0.8, 0.7),
    slice_spacing: float = 2.5,
    origin: tuple[float, float, float] = (-100.0, -120.0, -50.0),
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    shear_per_slice: tuple[float, float, float] = (0.0, 0.0, 0.0),
    skip_slices: tuple[int, ...] = (),
    study_uid: str | None = None,
    patient_id: str = PHI["PatientID"],
    series_description: str = "Abdomen 2.5 B30f",
    series_number: int = 2,
    kernel: str = "B30f",
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    modality: str = "CT",
    sop_class: str = CT_IMAGE_STORAGE,
    slope: float = 1.0,
    intercept: float = -1024.0,
    pixel_representation: int = 0,
    bits_stored: int = 12,
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    padding_value: int | None = None,
    extension: str = ".dcm",
    seed: int = 0,
    phi: dict[str, str] | None = None,
    hu: np.ndarray | None = None,
) -> SeriesFixture:
    """Write a series; file order and InstanceNumber are shuffled so nothing relies on them."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or new_uid()
    series_uid = new_uid()
    phi_values = dict(PHI if phi is None else phi)
    phi_values["PatientID"] = patient_id
    expected = phantom_hu(n_slices, rows, columns, seed) if hu is None else hu
    row_cos = np.array(orientation[:3], dtype=float)
    col_cos = np.array(orientation[3:], dtype=float)
    normal = np.cross(row_cos, col_cos)
    kept = [k for k in range(n_slices) if k not in skip_slices]
    order = kept[:]
    random.Random(seed).shuffle(order)
    files: list[Path] = []
    for instance, k in enumerate(order, start=1):
        position = np.array(origin) + k * slice_spacing * normal + k * np.array(shear_per_slice)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
        sop_uid = new_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = UID(sop_class)
        ds.SOPInstanceUID = UID(sop_uid)
        ds.StudyInstanceUID = UID(study_uid)
        ds.SeriesInstanceUID = UID(series_uid)
        ds.Modality = modality
        ds.ImageType = list(image_type)
        ds.SeriesDescription = series_description
        ds.SeriesNumber = series_number
        ds.ConvolutionKernel = kernel
        ds.InstanceNumber = instance
        for key, value in phi_values.items():
            setattr(ds, key, value)
        ds.StudyDescription = f"CT chest {phi_values.get('PatientName', '')}"
        ds.StudyTime, ds.StudyID = "101010", "1"
        ds.ImagePositionPatient = [round(float(v), 6) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [pixel_spacing[0], pixel_spacing[1]]
        ds.SliceThickness = slice_spacing
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = pixel_representation
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        stored = np.rint((expected[k].astype(np.float64) - intercept) / slope).astype(np.int64)
        dtype = np.int16 if pixel_representation else np.uint16
        if padding_value is not None:
            ds.PixelPaddingValue = padding_value
            outside = expected[k] <= -1000
            stored[outside] = padding_value
        stored_array = stored.astype(dtype)
        ds.PixelData = stored_array.tobytes()
        if transfer_syntax == "1.2.840.10008.1.2.1.99":
            ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)  # deflated when saved
        elif transfer_syntax != "1.2.840.10008.1.2.1":
            ds.compress(transfer_syntax, stored_array)
        path = folder / f"IM{instance:04d}{extension}"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    kept_expected = expected[kept]
    if padding_value is not None:
        kept_expected = np.where(kept_expected <= -1000, -1024, kept_expected).astype(np.int16)
    return SeriesFixture(
        folder=folder,
        files=files,
        study_uid=study_uid,
        series_uid=series_uid,
        patient_id=patient_id,
        hu_kji=kept_expected,
        origin_lps=tuple(float(v) for v in np.array(origin)),  # type: ignore[arg-type]
        orientation=tuple(orientation),
        pixel_spacing=pixel_spacing,
        slice_spacing=slice_spacing,
        extras={"phi": phi_values, "pydicom": pydicom.__version__},
    )


def write_enhanced_ct(
    path: Path,
    *,
    n_frames: int = 12,
    rows: int = 16,
    columns: int = 18,
    slice_spacing: float = 3.0,
    origin: tuple[float, float, float] = (10.0, -20.0, -60.0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    study_uid: str | None = None,
    seed: int = 1,
) -> SeriesFixture:
    """One multi-frame Enhanced CT file; rescale only inside PixelValueTransformationSequence."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import UID, ExplicitVRLittleEndian

    path.parent.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or new_uid()
    series_uid = new_uid()
    expected = phantom_hu(n_frames, rows, columns, seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_uid = new_uid()
    ds.file_meta.MediaStorageSOPClassUID = UID(ENHANCED_CT_IMAGE_STORAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UID(ENHANCED_CT_IMAGE_STORAGE)
    ds.SOPInstanceUID = UID(sop_uid)
    ds.StudyInstanceUID = UID(study_uid)
    ds.SeriesInstanceUID = UID(series_uid)
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.SeriesDescription = "Enhanced chest"
    ds.SeriesNumber = 3
    for key, value in PHI.items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns = rows, columns
    ds.NumberOfFrames = n_frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared.PlaneOrientationSequence = Sequence([orientation])
    measures = Dataset()
    measures.PixelSpacing = [0.9, 0.9]
    measures.SliceThickness = slice_spacing
    shared.PixelMeasuresSequence = Sequence([measures])
    transform = Dataset()
    transform.RescaleSlope = f"{slope:g}"
    transform.RescaleIntercept = f"{intercept:g}"
    transform.RescaleType = "HU"
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    frame_order = list(range(n_frames))
    random.Random(seed).shuffle(frame_order)
    stored_frames = []
    for k in frame_order:
        item = Dataset()
        plane = Dataset()
        plane.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * slice_spacing]
        item.PlanePositionSequence = Sequence([plane])
        per_frame.append(item)
        stored_frames.append(np.rint((expected[k] - intercept) / slope).astype(np.uint16))
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.stack(stored_frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return SeriesFixture(
        folder=path.parent,
        files=[path],
        study_uid=study_uid,
        series_uid=series_uid,
        patient_id=PHI["PatientID"],
        hu_kji=expected,
        origin_lps=origin,
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        pixel_spacing=(0.9, 0.9),
        slice_spacing=slice_spacing,
    )


def expected_affine_ras_ijk(fixture: SeriesFixture) -> np.ndarray:
    """The (i, j, k) -> RAS affine the converter must produce before canonical reorientation."""
    row_cos = np.array(fixture.orientation[:3])
    col_cos = np.array(fixture.orientation[3:])
    normal = np.cross(row_cos, col_cos)
    affine = np.eye(4)
    affine[:3, 0] = row_cos * fixture.pixel_spacing[1]
    affine[:3, 1] = col_cos * fixture.pixel_spacing[0]
    affine[:3, 2] = normal * fixture.slice_spacing
    affine[:3, 3] = fixture.origin_lps
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
