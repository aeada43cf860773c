"""Benchmark: `fvlm convert` vs dcm2niix (PyPI wheel) vs the dicom2nifti package on one real-size series.

    .venv/bin/python benchmarks/convert_vs_dcm2niix.py [--slices 300] [--size 512] [--syntax 1.2.840.10008.1.2.1]

Writes a synthetic axial CT series (pydicom, shuffled file names, slope/intercept, padding), converts it with
each tool in this run (every tool as a fresh process: dcm2niix binary, `python -c` for the two Python
converters; ``--repeat`` rounds, the tools interleaved in each, best run per tool), prints wall and CPU times,
ratios against ours, the heavy modules our process ended up importing, and the max difference of each output
against ours after reorienting everything to RAS (geometry: affine; HU: voxelwise on the same grid).
Peak RSS of our converter is measured in its child process (bounded memory check). Ratios are
ours / tool: below 1.0 means ours is faster.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_series(folder: Path, *, slices: int, size: int, syntax: str, seed: int = 0) -> None:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    yy, xx = np.mgrid[0:size, 0:size]
    body = ((yy - size / 2) / (size * 0.38)) ** 2 + ((xx - size / 2) / (size * 0.45)) ** 2 < 1
    lungs = (((yy - size * 0.45) / (size * 0.2)) ** 2 + ((np.abs(xx - size / 2) - size * 0.2) / (size * 0.12)) ** 2) < 1
    fov = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 2) ** 2
    order = list(range(slices))
    rng.shuffle(order)
    for instance, k in enumerate(order, start=1):
        hu = np.where(body, 40, -1000).astype(np.float32)
        hu[lungs & body] = -850
        hu += rng.normal(0, 12, size=hu.shape).astype(np.float32) * body
        hu[int(size * 0.7) : int(size * 0.75), int(size * 0.48) : int(size * 0.52)] = 700 + k  # spine-ish
        stored = np.rint(hu + 1024).astype(np.int16)
        stored[~fov] = -2000  # padding outside the reconstruction circle
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
        ds.SOPInstanceUID = UID(sop)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.Modality = "BENCH-1", "Bench^Mark", "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 2, k + 1, "bench 1mm"  # dicom2nifti sorts by it
        ds.ConvolutionKernel = "B30f"
        ds.ImagePositionPatient = [-250.0, -250.0, -400.0 + k * 1.0]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [500.0 / size, 500.0 / size]
        ds.SliceThickness = 1.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        ds.PixelPaddingValue = -2000
        ds.PixelData = stored.tobytes()
        if syntax != ExplicitVRLittleEndian:
            ds.compress(syntax, stored)
        ds.save_as(folder / f"IM{instance:05d}", enforce_file_format=True)
    del pydicom


def children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_process(command: list[str], capture: bool = False) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds user+sys, stdout) of one child process. CPU time is the steadier
    figure on a shared machine; wall time is what a user waits."""
    cpu_before = children_cpu_seconds()
    started = time.perf_counter()
    result = subprocess.run(
        command,
        check=True,
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return time.perf_counter() - started, children_cpu_seconds() - cpu_before, result.stdout or ""


def timed(command: list[str]) -> dict:
    wall, cpu, _ = run_process(command)
    return {"seconds": wall, "cpu_seconds": cpu}


def ours(input_dir: Path, output_dir: Path, extension: str, threads: int) -> dict:
    """Run our converter in a fresh child process (interpreter start + imports + conversion, like the
    CLI); returns the whole process wall time, the library-call time and the peak RSS."""
    code = (
        "import json, resource, sys, time; sys.path.insert(0, %r)\n"  # noqa: UP031 (a code template: its braces stay literal)
        "t = time.perf_counter()\n"
        "from pathlib import Path\n"
        "from preprocessing.convert import ConvertJob, ConvertSettings, run_convert\n"
        "ti = time.perf_counter() - t; t = time.perf_counter()\n"
        "s = run_convert(ConvertJob(input_dir=Path(%r), output_dir=Path(%r), workers=1, decode_threads=%d,"
        " settings=ConvertSettings(salt='bench', min_slices=1, output_extension=%r)))\n"
        "dt = time.perf_counter() - t\n"
        "print(json.dumps({'import_seconds': ti, 'call_seconds': dt, 'ok': s.n_ok, 'volume': s.rows[0].volume_path,"
        " 'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,"
        " 'imported': [m for m in ('pydicom', 'nibabel', 'pyarrow', 'pandas', 'scipy.ndimage')"
        " if m in sys.modules]}))\n"
    ) % (str(REPO), str(input_dir), str(output_dir), threads, extension)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    wall, cpu, stdout = run_process([sys.executable, "-c", code], capture=True)
    report = json.loads(stdout.strip().splitlines()[-1])
    report["seconds"], report["cpu_seconds"] = wall, cpu
    report["path"] = str(output_dir / report["volume"])
    return report


def best_of(reports: list[dict]) -> dict:
    """Fastest of the runs of one tool (the machine is shared; the minimum is the least disturbed)."""
    best = dict(min(reports, key=lambda r: r["seconds"]))
    best["cpu_seconds"] = min(r["cpu_seconds"] for r in reports)
    return best


def interleaved(repeat: int, runs: dict[str, tuple[int, object]]) -> dict[str, dict]:
    """``repeat`` rounds, each running every tool once in turn (a tool with fewer runs only in the first rounds),
    so a change of the machine's load falls on all tools alike; the best of each tool's runs."""
    reports: dict[str, list[dict]] = {name: [] for name in runs}
    for round_ in range(repeat):
        for name, (times, run) in runs.items():
            if round_ < times:
                reports[name].append(run())  # type: ignore[operator]
    return {name: best_of(items) for name, items in reports.items()}


def canonical(path: Path):
    import nibabel as nib

    return nib.as_closest_canonical(nib.load(path))


def compare(reference, other) -> dict:
    if reference.shape != other.shape:
        return {
            "shape": list(other.shape),
            "same_shape": False,
            "affine_max_diff_mm": float(np.abs(reference.affine - other.affine).max()),
        }
    a = np.asanyarray(reference.dataobj).astype(np.float32)
    b = other.get_fdata(dtype=np.float32)
    inside = a > -1024  # outside the FOV: we write air, others keep padding / their own fill
    return {
        "same_shape": True,
        "affine_max_diff_mm": float(np.abs(reference.affine - other.affine).max()),
        "hu_max_abs_diff_inside_fov": float(np.abs(a[inside] - b[inside]).max()),
        "hu_max_abs_diff_all": float(np.abs(a - b).max()),
    }


def dcm2niix_binary() -> str:
    """The dcm2niix executable itself. The PyPI wheel's ``dcm2niix`` console script is a Python wrapper that
    runs it: an interpreter start per call (~0.05 CPU s) that would be counted as dcm2niix's own cost."""
    try:
        import dcm2niix

        return str(dcm2niix.bin)
    except ImportError:
        return shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--syntax", default="1.2.840.10008.1.2.1", help="transfer syntax of the generated files")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="our decode threads")
    parser.add_argument("--skip-dicom2nifti", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool; the fastest counts")
    parser.add_argument("--workdir", default=None)
    parser.add_argument(
        "--input", default=None, help="convert this existing one-series folder instead of generating one"
    )
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fvlm-bench-"))
    series = Path(args.input) if args.input else work / "dicom"
    if not series.exists():
        print(f"writing {args.slices} x {args.size}x{args.size} series ({args.syntax}) to {series} ...", flush=True)
        write_series(series, slices=args.slices, size=args.size, syntax=args.syntax)
    dcm2niix = dcm2niix_binary()
    for path in series.iterdir():  # warm the page cache so no tool pays the first disk read
        path.read_bytes()
    runs: dict[str, tuple[int, object]] = {}
    for extension, gz in ((".nii", "n"), (".nii.gz", "y")):
        runs[f"ours {extension}"] = (
            args.repeat,
            functools.partial(ours, series, work / f"ours{extension}", extension, args.threads),
        )
        out = work / f"dcm2niix{extension}"

        def run_dcm2niix(out: Path = out, gz: str = gz, extension: str = extension) -> dict:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            report = timed([dcm2niix, "-z", gz, "-b", "n", "-f", "vol", "-o", str(out), str(series)])
            return {**report, "path": str(out / f"vol{extension}")}

        runs[f"dcm2niix {extension}"] = (args.repeat, run_dcm2niix)
    if not args.skip_dicom2nifti:
        out = work / "dicom2nifti"

        def run_dicom2nifti() -> dict:  # also a fresh Python process, like ours
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            target = out / "vol.nii.gz"
            code = (
                f"import dicom2nifti; dicom2nifti.dicom_series_to_nifti({str(series)!r}, "
                f"{str(target)!r}, reorient_nifti=True)"
            )
            return {**timed([sys.executable, "-c", code]), "path": str(target)}

        runs["dicom2nifti .nii.gz"] = (max(1, args.repeat // 2), run_dicom2nifti)
    results = interleaved(args.repeat, runs)
    print()
    described = (
        f"{series} ({len(list(series.iterdir()))} files)"
        if args.input
        else (f"{args.slices} slices {args.size}x{args.size}, transfer syntax {args.syntax}")
    )
    print(
        f"series: {described}, decode threads {args.threads}, load "
        f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(f"{'tool':22s} {'wall s':>7s} {'ours/tool':>9s} {'cpu s':>7s} {'ours/tool':>9s}  geometry / HU vs ours")
    for extension in (".nii", ".nii.gz"):
        reference = canonical(Path(results[f"ours {extension}"]["path"]))
        for name, item in results.items():
            if not name.endswith(extension) or (extension == ".nii" and name.endswith(".nii.gz")):
                continue
            ratio = results[f"ours {extension}"]["seconds"] / item["seconds"]
            cpu_ratio = results[f"ours {extension}"]["cpu_seconds"] / item["cpu_seconds"]
            detail = (
                compare(reference, canonical(Path(item["path"])))
                if not name.startswith("ours")
                else {
                    "imports_s": round(item["import_seconds"], 2),
                    "convert_call_s": round(item["call_seconds"], 2),
                    "peak_rss_mb": round(item["peak_rss_mb"]),
                    "imported": item["imported"],
                }
            )
            print(
                f"{name:22s} {item['seconds']:7.2f} {ratio:9.2f} "
                f"{item['cpu_seconds']:7.2f} {cpu_ratio:9.2f}  {json.dumps(detail)}"
            )
    print(f"(outputs kept under {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
