"""Write one phantom study as DICOM: a thin axial series, a thick sharp-kernel series and a localizer.

Files are CT Image Storage, uncompressed (explicit VR little endian, a few studies implicit VR), with
realistic geometry (LPS ImagePositionPatient / ImageOrientationPatient, HFS), rescale variants
(intercept -1024 or -1000, signed or unsigned pixels) and planted fake PHI. UIDs come from
``generate_uid`` with deterministic entropy sources, so the same seed gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.io import atomic_path
from synthetic.phantom import SIZES, Phantom

VENDORS = (
    {
        "Manufacturer": "SIEMENS",
        "ManufacturerModelName": "SOMATOM Definition AS",
        "soft": "Br40",
        "sharp": "Bl57",
        "thin_desc": "Thorax {t} Br40",
        "thick_desc": "Lung {t} Bl57",
        "scout": "Topogram 0.6 T20f",
    },
    {
        "Manufacturer": "GE MEDICAL SYSTEMS",
        "ManufacturerModelName": "Revolution CT",
        "soft": "STANDARD",
        "sharp": "LUNG",
        "thin_desc": "{t}mm STND",
        "thick_desc": "{t}mm LUNG",
        "scout": "Scout",
    },
    {
        "Manufacturer": "Philips",
        "ManufacturerModelName": "Ingenuity CT",
        "soft": "B",
        "sharp": "L",
        "thin_desc": "Chest {t}mm B",
        "thick_desc": "Chest {t}mm L",
        "scout": "Surview",
    },
)


@dataclass(frozen=True)
class DicomVariant:
    """How one study is encoded (drawn per study from its own random stream)."""

    implicit_vr: bool
    intercept: int  # -1024 or -1000
    signed: bool  # PixelRepresentation 1 (int16) or 0 (uint16)
    shuffle_files: bool  # file names not in slice order
    shuffle_instance_numbers: bool
    vendor: int
    kvp: int
    tube_current_ma: int

    @classmethod
    def draw(cls, rng: np.random.Generator) -> DicomVariant:
        intercept = -1000 if rng.random() < 0.2 else -1024
        signed = True if intercept == -1000 else bool(rng.random() < 0.6)  # unsigned only with -1024
        return cls(
            implicit_vr=bool(rng.random() < 0.15),
            intercept=intercept,
            signed=signed,
            shuffle_files=bool(rng.random() < 0.2),
            shuffle_instance_numbers=bool(rng.random() < 0.1),
            vendor=int(rng.integers(0, len(VENDORS))),
            kvp=int(rng.choice([100, 120, 120, 140])),
            tube_current_ma=int(rng.integers(80, 320)),
        )


def uid(seed: int, *parts: object) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["fvlm-demo-data", str(seed), *(str(p) for p in parts)]))


def _base_dataset(phi: dict[str, Any], study_uid: str, frame_uid: str, variant: DicomVariant):
    from pydicom.dataset import Dataset

    vendor = VENDORS[variant.vendor]
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    ds.StudyDate = phi["StudyDate"]
    ds.SeriesDate = phi["StudyDate"]
    ds.AcquisitionDate = phi["StudyDate"]
    ds.ContentDate = phi["StudyDate"]
    ds.StudyTime = phi["StudyTime"]
    ds.SeriesTime = phi["StudyTime"]
    ds.AcquisitionTime = phi["StudyTime"]
    ds.ContentTime = phi["StudyTime"]
    ds.AccessionNumber = phi["AccessionNumber"]
    ds.Modality = "CT"
    ds.Manufacturer = vendor["Manufacturer"]
    ds.InstitutionName = phi["InstitutionName"]
    ds.ReferringPhysicianName = phi["ReferringPhysicianName"]
    ds.StudyDescription = "CT CHEST WITHOUT CONTRAST"
    ds.OperatorsName = phi["OperatorsName"]
    ds.ManufacturerModelName = vendor["ManufacturerModelName"]
    ds.PatientName = phi["PatientName"]
    ds.PatientID = phi["PatientID"]
    ds.PatientBirthDate = phi["PatientBirthDate"]
    ds.PatientSex = phi["PatientSex"]
    ds.PatientAge = phi["PatientAge"]
    ds.BodyPartExamined = "CHEST"
    ds.KVP = variant.kvp
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.StudyID = phi["StudyID"]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.XRayTubeCurrent = variant.tube_current_ma
    ds.GantryDetectorTilt = 0
    ds.RotationDirection = "CW"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    return ds


def _write(ds, path: Path, variant: DicomVariant, sop_uid: str) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if variant.implicit_vr else ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    meta.ImplementationVersionName = "FVLM_DEMO_1"
    ds.file_meta = meta
    ds.SOPInstanceUID = sop_uid
    ds.preamble = b"\0" * 128
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def _set_pixels(ds, stored: np.ndarray, signed: bool, bits_stored: int) -> None:
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = stored.astype("<i2" if signed else "<u2").tobytes()


def sharp_kernel(slab: np.ndarray) -> np.ndarray:
    """In-plane edge enhancement standing in for a lung/sharp reconstruction kernel."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(slab, sigma=(0, 1.0, 1.0))
    return slab + 0.7 * (slab - smooth)


def write_study(
    phantom: Phantom,
    study_dir: Path,
    *,
    seed: int,
    study_uid: str,
    phi: dict[str, Any],
    variant: DicomVariant,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """Write the three series of one study under ``study_dir``; returns one summary per series."""
    index = phantom.index
    spec = SIZES[phantom.size]
    vendor = VENDORS[variant.vendor]
    frame_uid = uid(seed, index, "frame")
    native = phantom.native_hu()  # (k, j, i): slices inferior->superior, rows A->P, columns R->L
    grid = phantom.grid
    dz, dy, dx = grid.spacing_kji
    x0, y0, z0 = grid.origin_lps
    series_out: list[dict[str, Any]] = []

    def axial_series(
        number: int,
        volume: np.ndarray,
        thickness: float,
        z_first: float,
        kernel: str,
        description: str,
        window: tuple[int, int],
        image_type: list[str],
    ) -> dict[str, Any]:
        series_uid = uid(seed, index, "series", number)
        folder = study_dir / f"series_{number}"
        count = volume.shape[0]
        # scanner order: instance 1 = most superior slice (head first)
        instance_numbers = np.arange(1, count + 1)
        if variant.shuffle_instance_numbers:
            instance_numbers = rng.permutation(instance_numbers)
        file_numbers = rng.permutation(count) if variant.shuffle_files else np.arange(count)
        for order in range(count):
            k = count - 1 - order
            ds = _base_dataset(phi, study_uid, frame_uid, variant)
            ds.ImageType = image_type
            ds.SeriesDescription = description
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = number
            ds.AcquisitionNumber = 1
            ds.InstanceNumber = int(instance_numbers[order])
            z = round(z_first + k * thickness, 4)
            ds.ImagePositionPatient = [round(x0, 4), round(y0, 4), z]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.SliceLocation = z
            ds.SliceThickness = thickness
            ds.SpacingBetweenSlices = thickness
            ds.PixelSpacing = [round(dy, 6), round(dx, 6)]
            ds.ConvolutionKernel = kernel
            ds.DataCollectionDiameter = 500
            ds.ReconstructionDiameter = round(dx * grid.shape_kji[2], 3)
            ds.TableHeight = round(150.0 - phantom.plan.get("table_y_mm", 0.0), 2)
            ds.WindowCenter, ds.WindowWidth = window
            ds.RescaleIntercept = variant.intercept
            ds.RescaleSlope = 1
            ds.RescaleType = "HU"
            stored = volume[k].astype(np.int32) - variant.intercept
            _set_pixels(ds, stored, variant.signed, 16 if variant.signed else 12)
            sop = uid(seed, index, "sop", number, k)
            _write(ds, folder / f"IM{int(file_numbers[order]) + 1:04d}.dcm", variant, sop)
        return {
            "series_number": number,
            "series_uid": series_uid,
            "description": description,
            "kernel": kernel,
            "slices": count,
            "slice_thickness_mm": thickness,
            "folder": folder.relative_to(study_dir.parent).as_posix(),
        }

    thin_mm = spec.thin_mm
    t_label = f"{thin_mm:g}"
    series_out.append(
        axial_series(
            2,
            native,
            thin_mm,
            z0,
            vendor["soft"],
            vendor["thin_desc"].format(t=t_label),
            (40, 400),
            ["ORIGINAL", "PRIMARY", "AXIAL"],
        )
    )
    factor = spec.thick_factor
    slabs = native.shape[0] // factor
    thick = native[: slabs * factor].astype(np.float32).reshape(slabs, factor, *native.shape[1:]).mean(axis=1)
    thick = np.clip(np.rint(sharp_kernel(thick)), -1024, 3071).astype(np.int16)
    thick_mm = thin_mm * factor
    z_thick = z0 + (factor - 1) / 2 * thin_mm
    series_out.append(
        axial_series(
            3,
            thick,
            thick_mm,
            z_thick,
            vendor["sharp"],
            vendor["thick_desc"].format(t=f"{thick_mm:g}"),
            (-600, 1500),
            ["DERIVED", "SECONDARY", "AXIAL"],
        )
    )

    # localizer: one coronal projection (rows superior -> inferior, columns R -> L as LPS +x)
    attenuation = np.clip(native.astype(np.float32) + 1000.0, 0, None) / 1000.0
    projection = attenuation.sum(axis=1) * dy  # (k, i), water-equivalent path length in mm
    image = np.clip(projection / max(float(projection.max()), 1e-6) * 4000.0, 0, 4095).astype(np.uint16)[::-1]
    ds = _base_dataset(phi, study_uid, frame_uid, variant)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SeriesDescription = vendor["scout"]
    scout_uid = uid(seed, index, "series", 1)
    ds.SeriesInstanceUID = scout_uid
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [round(x0, 4), 0.0, round(z0 + (native.shape[0] - 1) * dz, 4)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.PixelSpacing = [round(dz, 6), round(dx, 6)]
    ds.SliceThickness = 1.0
    ds.ConvolutionKernel = vendor["soft"]
    ds.WindowCenter, ds.WindowWidth = 2000, 4000
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    _set_pixels(ds, image, False, 12)
    _write(ds, study_dir / "series_1" / "IM0001.dcm", variant, uid(seed, index, "sop", 1, 0))
    series_out.insert(
        0,
        {
            "series_number": 1,
            "series_uid": scout_uid,
            "description": vendor["scout"],
            "kernel": vendor["soft"],
            "slices": 1,
            "slice_thickness_mm": None,
            "folder": (study_dir / "series_1").relative_to(study_dir.parent).as_posix(),
        },
    )
    return series_out
