"""Precomputed-mask backend: sites that already have TotalSegmentator (or compatible) masks.

Accepted per study, in ``masks_dir``:

* ``<stem>.nii.gz`` / ``<stem>.nii`` — a multilabel NIfTI with TotalSegmentator ``total`` ids;
* ``<stem>/`` holding ``<class name>.nii.gz`` binary masks — TotalSegmentator's per-class output;
* ``<stem>.dcm`` — a DICOM SEG (read with highdicom); segments are mapped to ``total`` ids by their
  label (``"Liver"`` -> ``liver``, ``"Lung upper lobe left"`` -> ``lung_upper_lobe_left``).

``<stem>`` is either the study_id itself or the raw study key (e.g. the StudyInstanceUID the demo
cohort uses), in which case ``pseudonym(stem, salt, kind="study")`` is the study_id. A study without a
StudyInstanceUID has the key ``folder:<folder relative to the raw DICOM root>``, which is no file name:
its mask is ``folder__<folder with / as __>`` (``folder:site1/P01`` -> ``folder__site1__P01.nii.gz``;
``core.layout.mask_stem_for_study_key``), or the percent-encoded key, or the study_id. Masks on another
grid are resampled (nearest) onto the volume; a mask that does not cover the volume is an error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIXES = (".dcm",)


class MaskSourceError(ValueError):
    """A precomputed mask that cannot be read or mapped; the message names the file and the reason."""


@dataclass
class MaskLabels:
    """A label map with its own grid (array as stored, NIfTI-style affine to RAS mm)."""

    ids: Any
    affine: Any
    warnings: list[str] = field(default_factory=list)
    sparse: bool = False  # DICOM SEG: frames may cover only part of the volume (rest = background)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, *DICOM_SUFFIXES):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def normalise_class_name(label: str) -> str:
    """'Lung upper lobe left' / 'lung-upper-lobe-left' -> 'lung_upper_lobe_left'."""
    return re.sub(r"[^a-z0-9]+", "_", label.strip().lower()).strip("_")


def load_multilabel_nifti(path: Path) -> MaskLabels:
    import nibabel as nib
    import numpy as np

    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj)
    except Exception as error:  # noqa: BLE001 - any reader failure is a bad input file
        raise MaskSourceError(f"{path.name}: not a readable NIfTI ({type(error).__name__}: {error})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise MaskSourceError(f"{path.name}: expected a 3D label map, got shape {data.shape}")
    if data.dtype.kind == "f":
        if not np.all(np.equal(np.mod(data, 1), 0)):
            raise MaskSourceError(f"{path.name}: label map holds non-integer values")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise MaskSourceError(f"{path.name}: label ids outside 0..255 (min {data.min()}, max {data.max()})")
    return MaskLabels(data.astype(np.uint8), image.affine)


def load_class_folder(folder: Path) -> MaskLabels:
    """TotalSegmentator per-class output: one binary ``<class>.nii.gz`` per class -> `total` ids."""
    import nibabel as nib
    import numpy as np

    from core.anatomy_sets import totalseg_name_to_id

    name_to_id = totalseg_name_to_id()
    files = sorted(p for p in folder.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
    if not files:
        raise MaskSourceError(f"{folder.name}/: no <class>.nii.gz files")
    warnings: list[str] = []
    ids = affine = None
    for path in sorted(files, key=lambda p: name_to_id.get(_stem(p), 10_000)):
        class_name = _stem(path)
        if class_name not in name_to_id:
            warnings.append(f"{folder.name}/{path.name}: not a TotalSegmentator 'total' class, ignored")
            continue
        image = nib.load(str(path))
        data = np.asarray(image.dataobj)
        if ids is None:
            ids = np.zeros(data.shape, dtype=np.uint8)
            affine = image.affine
        elif data.shape != ids.shape or not np.allclose(image.affine, affine, atol=1e-3):
            raise MaskSourceError(f"{folder.name}/{path.name}: grid differs from the other class masks")
        foreground = data > 0
        if (ids[foreground] != 0).any():
            warnings.append(f"{folder.name}/{path.name}: overlaps other classes; the higher id wins")
        ids[foreground] = name_to_id[class_name]
    if ids is None:
        raise MaskSourceError(f"{folder.name}/: none of its files is a TotalSegmentator 'total' class")
    return MaskLabels(ids, affine, warnings)


def load_dicom_seg(path: Path) -> MaskLabels:
    """DICOM SEG -> `total` ids on the SEG's own (LPS -> RAS converted) volume grid."""
    import numpy as np

    from core.anatomy_sets import totalseg_name_to_id

    try:
        import highdicom as hd

        seg = hd.seg.segread(str(path))
    except Exception as error:  # noqa: BLE001
        raise MaskSourceError(f"{path.name}: not a readable DICOM SEG ({type(error).__name__}: {error})") from None
    name_to_id = totalseg_name_to_id()
    warnings: list[str] = []
    numbers: list[int] = []
    class_ids: list[int] = []
    for item in seg.SegmentSequence:
        class_name = normalise_class_name(str(item.SegmentLabel))
        if class_name in name_to_id:
            numbers.append(int(item.SegmentNumber))
            class_ids.append(name_to_id[class_name])
        else:
            warnings.append(f"{path.name}: segment {item.SegmentLabel!r} is not a TotalSegmentator class, ignored")
    if not numbers:
        raise MaskSourceError(f"{path.name}: no segment label matches a TotalSegmentator 'total' class")
    try:
        volume = seg.get_volume(segment_numbers=numbers, combine_segments=True, relabel=True)
    except Exception as error:  # noqa: BLE001
        raise MaskSourceError(f"{path.name}: SEG frames do not form a regular volume ({error})") from None
    relabelled = np.asarray(volume.array)  # 1..len(numbers) in the order of `numbers`
    lut = np.zeros(len(numbers) + 1, dtype=np.uint8)
    lut[1:] = class_ids
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    return MaskLabels(lut[relabelled], lps_to_ras @ np.asarray(volume.affine, dtype=np.float64), warnings, sparse=True)


def load_mask_source(path: str | os.PathLike[str]) -> MaskLabels:
    """Any accepted mask source (multilabel NIfTI, per-class folder, DICOM SEG) -> `total` ids + grid."""
    source = Path(path)
    if source.is_dir():
        return load_class_folder(source)
    if source.name.endswith(NIFTI_SUFFIXES):
        return load_multilabel_nifti(source)
    if source.name.endswith(DICOM_SUFFIXES):
        return load_dicom_seg(source)
    raise MaskSourceError(f"{source.name}: unknown mask format (want .nii.gz, .nii, .dcm or a class folder)")


def source_fingerprint(path: Path) -> str:
    """Content hash of a mask source (file, or every file of a class folder)."""
    from core.io import sha256_file, sha256_files

    if path.is_dir():
        return sha256_files(sorted(p for p in path.rglob("*") if p.is_file()))
    return sha256_file(path)


class PrecomputedBackend:
    """Masks that already exist: one source per study, found by study_id or by pseudonymised raw key."""

    name = "precomputed"

    def __init__(self, masks_dir: str | os.PathLike[str], *, salt: str, pseudonym_length: int = 16) -> None:
        self.masks_dir = Path(masks_dir)
        self.salt = salt
        self.pseudonym_length = pseudonym_length
        self._index: dict[str, Path] | None = None
        self.index_warnings: list[str] = []

    @property
    def model_id(self) -> str:
        return "precomputed"

    def load(self) -> PrecomputedBackend:
        self.index()
        return self

    def close(self) -> None:
        return None

    def index(self) -> dict[str, Path]:
        """study_id -> mask source, for every source in ``masks_dir`` (stem == study_id or raw key)."""
        if self._index is not None:
            return self._index
        from core.layout import study_keys_of_mask_stem
        from core.privacy import pseudonym

        if not self.masks_dir.is_dir():
            raise FileNotFoundError(
                f"precomputed masks folder not found: {self.masks_dir} (paths.precomputed_masks; without masks "
                "set segment.backend: totalsegmentator)"
            )
        index: dict[str, Path] = {}
        for entry in sorted(self.masks_dir.iterdir()):
            if entry.name.startswith("."):
                continue
            if not (entry.is_dir() or entry.name.endswith((*NIFTI_SUFFIXES, *DICOM_SUFFIXES))):
                continue
            stem = _stem(entry)
            keys = study_keys_of_mask_stem(stem)
            candidates = {stem} | {
                pseudonym(key, self.salt, kind="study", length=self.pseudonym_length) for key in keys
            }
            for study_id in sorted(candidates):
                if study_id in index and index[study_id] != entry:
                    self.index_warnings.append(f"study {study_id}: more than one mask source; keeping the first")
                    continue
                index[study_id] = entry
        self._index = index
        return index

    def source_for(self, study_id: str) -> Path:
        try:
            return self.index()[study_id]
        except KeyError:
            raise MaskSourceError(
                f"no precomputed mask for study {study_id} in {self.masks_dir} (name it <study_id> or the study key, "
                "docs/convert.md Identity; `fvlm lookup` tells the study; or set segment.backend: totalsegmentator)"
            ) from None

    def config_fingerprint(self, study_id: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.name}
        if study_id is not None:
            try:
                source = self.source_for(study_id)
                out["source_sha256"] = source_fingerprint(source)
            except MaskSourceError:
                out["source_sha256"] = None
        return out

    def segment_study(self, study_id: str, image: Any) -> tuple[Any, list[str]]:
        """The study's mask as uint8 `total` ids on ``image``'s exact grid (+ warnings)."""
        from segmentation.geometry import MaskGeometryError, resample_labels_to_grid

        source = self.source_for(study_id)
        shown = self.display_name(study_id, source)
        try:
            labels = load_mask_source(source)
            ids = resample_labels_to_grid(
                labels.ids,
                labels.affine,
                tuple(image.shape[:3]),
                image.affine,
                what=f"mask {source.name}",
                require_coverage=not labels.sparse,
            )
        except (MaskSourceError, MaskGeometryError) as error:
            raise MaskSourceError(str(error).replace(source.name, shown)) from None
        warnings = [w.replace(source.name, shown) for w in labels.warnings]
        if ids is not labels.ids:
            warnings.append(f"{shown}: mask grid differs from the volume; resampled (nearest)")
        return ids, warnings

    @staticmethod
    def display_name(study_id: str, source: Path) -> str:
        """The source's name for messages, never the raw study key (it may be an identifier)."""
        stem = _stem(source)
        return source.name if stem == study_id else source.name.replace(stem, f"<{study_id}>")
