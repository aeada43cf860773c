"""Benchmark: a no-op `fvlm convert` (nothing new) over 10^3 and 10^4 known studies, with the file index.

    .venv/bin/python benchmarks/convert_noop.py [--studies 1000 10000] [--files-per-study 4] [--new 10]

Simulates an archive of small studies in a temporary folder: one tiny synthetic CT series (16 x 16 pixels,
``--files-per-study`` files; fewer slices than ``convert.min_slices``, so convert quarantines each study in
selection and no pixel is decoded) is copied per study with new UIDs (byte substitution of fixed-length UIDs:
thousands of files a second). For each size it runs, every run a fresh process (`python -c` of run_convert,
imports included): the first convert (reads every header, builds ``.fvlm-private/convert-index/...``), a no-op
convert, and a convert after ``--new`` studies were added (O(new) reads). It prints wall and CPU seconds,
the index hits, and the growth factor of the no-op between the sizes (1.0: constant; the size ratio: linear).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# fixed-length placeholders substituted per study / file (UIDs stay valid: digits only, same length)
STUDY_MARK, SERIES_MARK, SOP_MARK, PATIENT_MARK = (f"9{d}".ljust(12, d) for d in "1234")
UID_ROOT = "1.2.826.0.1.3680043.8.498."

RUN_CONVERT = """
import json, logging, sys
from pathlib import Path
logging.basicConfig(level=logging.WARNING)
logging.getLogger("preprocessing.dicom_discovery").setLevel(logging.INFO)
from preprocessing.convert import ConvertJob, ConvertSettings, run_convert
job = ConvertJob(input_dir=Path(sys.argv[1]), output_dir=Path(sys.argv[2]), settings=ConvertSettings(salt="bench"),
                 file_index=Path(sys.argv[3]), workers=1)
summary = run_convert(job)
print(json.dumps({"studies": summary.n_studies, "reused": summary.n_reused, "files": summary.n_files_seen}))
"""


def template_files(folder: Path, n_files: int) -> list[bytes]:
    """One tiny CT series as bytes, with the placeholders in its UIDs and PatientID."""
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n_files):
        sop = f"{UID_ROOT}{SOP_MARK}.{k + 1}"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
        meta.MediaStorageSOPInstanceUID = UID(sop)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{UID_ROOT}{STUDY_MARK}", f"{UID_ROOT}{SERIES_MARK}"
        ds.PatientID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = PATIENT_MARK, "CT", 2, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 2.5 * k], [1.0, 0, 0, 0, 1.0, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 2.5
        ds.Rows = ds.Columns = 16
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 16, 12, 11, 0, 1
        ds.PhotometricInterpretation, ds.RescaleSlope, ds.RescaleIntercept = "MONOCHROME2", 1, -1024
        ds.PixelData = np.full((16, 16), 1000 + k, dtype=np.uint16).tobytes()
        path = folder / f"{k:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        out.append(path.read_bytes())
    return out


def write_studies(root: Path, templates: list[bytes], start: int, count: int) -> None:
    for study in range(start, start + count):
        folder = root / f"S{study:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k, content in enumerate(templates):
            number = f"{study:012d}".encode()
            sop = f"{study * len(templates) + k:012d}".encode()
            data = (
                content.replace(STUDY_MARK.encode(), number)
                .replace(SERIES_MARK.encode(), number)
                .replace(SOP_MARK.encode(), sop)
                .replace(PATIENT_MARK.encode(), number)
            )
            (folder / f"{k:04d}.dcm").write_bytes(data)


def timed_child(script: str, *args: str) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Run ``python -c SCRIPT ARGS`` as a fresh process (imports included) in the repo; (wall s, CPU s, result)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done


def print_growth(results: list[dict], measure: str) -> None:
    """The no-op night's growth from the smallest to the largest archive, by ``measure`` (wall | cpu)."""
    if len(results) < 2:
        return
    small, large = results[0], results[-1]
    growth = large[f"noop_{measure}_s"] / max(small[f"noop_{measure}_s"], 1e-9)
    print(
        f"no-op growth {small['studies']} -> {large['studies']} studies: {growth:.2f}x {measure.replace('cpu', 'CPU')} "
        f"(linear would be {large['studies'] / small['studies']:.0f}x); no-op at {large['studies']}: "
        f"{large['noop_wall_s']} s wall, {large['noop_cpu_s']} s CPU"
    )


def timed_convert(source: Path, out: Path, index: Path) -> dict:
    wall, cpu, done = timed_child(RUN_CONVERT, str(source), str(out), str(index))
    index_line = [line for line in done.stderr.splitlines() if "file index:" in line]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        **summary,
        "index": index_line[-1].split("file index: ")[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--files-per-study", type=int, default=4)
    parser.add_argument("--new", type=int, default=10, help="studies added before the incremental run")
    args = parser.parse_args()
    from preprocessing import file_index

    results = []
    with tempfile.TemporaryDirectory(prefix="fvlm-noop-") as scratch:
        work = Path(scratch)
        templates = template_files(work / "template", args.files_per_study)
        for n in args.studies:
            source, out, index = work / f"dicom-{n}", work / f"out-{n}", work / f"index-{n}.pickle"
            started = time.perf_counter()
            write_studies(source, templates, 0, n)
            generated = time.perf_counter() - started
            # the index trusts a file only once its mtime / ctime are older than the recording scan by the racy
            # window; a real archive's files are older than that
            time.sleep(file_index.RACY_WINDOW_NS / 1e9 + 0.1)
            first = timed_convert(source, out, index)
            noop = timed_convert(source, out, index)
            write_studies(source, templates, n, args.new)
            incremental = timed_convert(source, out, index)
            row = {"studies": n, "files": n * args.files_per_study, "generate_s": round(generated, 1)}
            row.update({f"first_{k}": v for k, v in first.items() if k.endswith("_s")})
            row.update({f"noop_{k}": v for k, v in noop.items() if k.endswith("_s")})
            row.update({f"plus{args.new}_{k}": v for k, v in incremental.items() if k.endswith("_s")})
            row["noop_reused"] = noop["reused"]
            row["noop_index"], row[f"plus{args.new}_index"] = noop["index"], incremental["index"]
            results.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(source)
            shutil.rmtree(out)
    print_growth(results, "cpu")


if __name__ == "__main__":
    main()
