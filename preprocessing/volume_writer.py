"""Write an int16 HU volume as a RAS+ (nibabel canonical) NIfTI, atomically, with a PHI-free header."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.io import atomic_path
from preprocessing.deid import NIFTI_DESCRIPTION


class _LazyPydicom:
    """Stands for the pydicom module in nibabel.nifti1 until nibabel first uses it (its DICOM extension)."""

    def __getattr__(self, name: str):
        import importlib

        module = importlib.import_module("pydicom")
        try:
            return getattr(module, name)
        except AttributeError:
            return importlib.import_module(f"pydicom.{name}")


def import_nibabel_without_pydicom() -> None:
    """Import nibabel without the pydicom import that ``nibabel.nifti1`` does eagerly (for its NIfTI DICOM
    extension, unused here): ~0.2 CPU s, a sixth of converting one plain series, which itself never needs
    pydicom (the lean header reader and the native pixel path). nibabel's DICOM extension support is restored
    afterwards, importing pydicom on first use. Only for a moment when no other thread of this process may
    import pydicom (``run_convert`` before converting in its own thread): while nibabel is imported here,
    ``import pydicom`` fails. A no-op when nibabel or pydicom is already imported."""
    import importlib.util
    import sys

    if "nibabel" in sys.modules or "pydicom" in sys.modules or importlib.util.find_spec("pydicom") is None:
        return
    from core.imports import import_hiding

    nifti1 = import_hiding("nibabel.nifti1", "pydicom")  # nibabel's optional_package records pydicom absent
    nifti1.pdcm = _LazyPydicom()
    nifti1.have_dicom = True
    for key in (2, "dicom"):
        nifti1.extension_codes.handler[key] = nifti1.Nifti1DicomExtension


@dataclass(frozen=True)
class WrittenVolume:
    path: Path
    shape_zyx: tuple[int, int, int]
    spacing_zyx_mm: tuple[float, float, float]
    affine_ras: np.ndarray  # 4x4 for the on-disk (x, y, z) axes
    hu_min: int
    hu_max: int


def canonical_image(hu_xyz: np.ndarray, affine_ras: np.ndarray):
    """nibabel image reoriented to the closest RAS+ axes (array stays a view where possible)."""
    import nibabel as nib

    image = nib.Nifti1Image(hu_xyz, affine_ras)
    return nib.as_closest_canonical(image)


def write_ras_nifti(
    hu_kji: np.ndarray,
    affine_ras_ijk: np.ndarray,
    final_path: str | os.PathLike[str],
    *,
    gzip_level: int = 1,
    gzip_threads: int | None = None,
) -> WrittenVolume:
    """``hu_kji`` (slice, row, column) + the (i, j, k) affine -> RAS+ NIfTI at ``final_path``.

    ``.nii.gz`` is written as a multi-member gzip compressed in parallel threads with ISA-L (or zlib;
    both release the GIL); any gzip reader (nibabel, ITK, zlib's gzread) reads concatenated members."""
    import nibabel as nib

    if hu_kji.dtype != np.int16:
        raise TypeError(f"expected int16 HU, got {hu_kji.dtype}")
    if gzip_threads is None:
        gzip_threads = min(8, os.cpu_count() or 1)
    canonical = canonical_image(hu_kji.transpose(2, 1, 0), affine_ras_ijk)
    data = np.asanyarray(canonical.dataobj)
    image = nib.Nifti1Image(data, canonical.affine)
    header = image.header
    header.set_data_dtype(np.int16)
    header.set_xyzt_units("mm", "sec")
    header["descrip"] = NIFTI_DESCRIPTION
    header["aux_file"] = b""
    header["intent_name"] = b""
    header["db_name"] = b""
    image.set_qform(canonical.affine, code=1)
    image.set_sform(canonical.affine, code=1)
    with atomic_path(final_path) as tmp:
        if str(final_path).endswith(".nii.gz") and gzip_threads > 1:
            _save_gzip_parallel(image, data, tmp, level=gzip_level, threads=gzip_threads)
        else:
            nib.save(image, tmp)
    zooms = header.get_zooms()[:3]
    shape = data.shape
    return WrittenVolume(
        path=Path(final_path),
        shape_zyx=(int(shape[2]), int(shape[1]), int(shape[0])),
        spacing_zyx_mm=(float(zooms[2]), float(zooms[1]), float(zooms[0])),
        affine_ras=np.asarray(canonical.affine, dtype=np.float64),
        hu_min=int(data.min()) if data.size else 0,
        hu_max=int(data.max()) if data.size else 0,
    )


GZIP_CHUNK_BYTES = 8 << 20


def _fortran_chunks(data: np.ndarray, chunk_bytes: int):
    """The array's bytes in NIfTI (Fortran) order, a few whole z-slabs at a time (no full copy)."""
    slab_bytes = data.shape[0] * data.shape[1] * data.itemsize
    per_chunk = max(1, chunk_bytes // max(1, slab_bytes))
    for start in range(0, data.shape[2], per_chunk):
        block = data[:, :, start : start + per_chunk]
        yield memoryview(np.ascontiguousarray(block.transpose(2, 1, 0))).cast("B")  # no bytes copy


def _deflate_module():
    """ISA-L's zlib (same stream format, ~3.5x less CPU at level 1) when installed, else zlib."""
    try:
        from isal import isal_zlib

        return isal_zlib
    except ImportError:  # pragma: no cover - isal is a declared dependency; keep working without it
        import zlib

        return zlib


def _save_gzip_parallel(image, data: np.ndarray, path: Path, *, level: int, threads: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    zlib = _deflate_module()
    level = min(level, 3) if zlib.__name__.startswith("isal") else level  # ISA-L levels are 0..3

    header = image.header.copy()
    header.set_data_shape(data.shape)
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    header["scl_slope"] = np.nan
    header["scl_inter"] = np.nan
    head = header.binaryblock + b"\x00\x00\x00\x00"  # no extensions

    def compress(payload: bytes | memoryview) -> bytes:
        compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip container
        return compressor.compress(payload) + compressor.flush()

    with open(path, "wb") as handle, ThreadPoolExecutor(max_workers=threads) as pool:
        handle.write(compress(head))
        pending = []
        for chunk in _fortran_chunks(data, GZIP_CHUNK_BYTES):
            pending.append(pool.submit(compress, chunk))
            if len(pending) > 2 * threads:  # bounded: at most a few chunks in flight
                handle.write(pending.pop(0).result())
        for future in pending:
            handle.write(future.result())
