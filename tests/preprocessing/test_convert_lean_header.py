"""The lean header reader (``dicom_discovery.lean_header``) against pydicom: for every file, what discovery records
(study, series, PHI terms, slice headers, warnings, content hash) must be the same whichever reader read it.
Odd files are written byte by byte here (values with spaces, empty numbers, several values, non-ASCII text,
sequences of undefined length, implicit VR, truncation at every few bytes, ...); the lean reader must either
give pydicom's answer or decline (then pydicom reads the file)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from preprocessing import dicom_discovery as dd

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
CT = b"1.2.840.10008.5.1.4.1.1.2"


def element(tag: int, vr: bytes, value: bytes, *, explicit: bool = True, undefined: bool = False) -> bytes:
    group, number = tag >> 16, tag & 0xFFFF
    length = 0xFFFFFFFF if undefined else len(value)
    if not explicit:
        return struct.pack("<HHI", group, number, length) + value
    if vr in LONG_VRS:
        return struct.pack("<HH2sHI", group, number, vr, 0, length) + value
    return struct.pack("<HH2sH", group, number, vr, length) + value


def even(value: bytes, pad: bytes = b" ") -> bytes:
    return value + pad if len(value) % 2 else value


def base_elements(rows: int = 4, columns: int = 4) -> dict[int, tuple[bytes, bytes]]:
    uid = b"1.2.826.0.1.3680043.8.498.1"
    return {
        0x00080005: (b"CS", b"ISO_IR 100"),
        0x00080008: (b"CS", b"ORIGINAL\\PRIMARY\\AXIAL"),
        0x00080016: (b"UI", even(CT, b"\x00")),
        0x00080018: (b"UI", even(uid + b".7", b"\x00")),
        0x00080020: (b"DA", b"20200101"),
        0x00080050: (b"SH", b"ACC123"),
        0x00080060: (b"CS", b"CT"),
        0x00080080: (b"LO", b"General Hospital"),
        0x00080090: (b"PN", b"Doc^Referring"),
        0x00081030: (b"LO", b"CT chest"),
        0x0008103E: (b"LO", b"Abdomen 2.5 B30f"),
        0x00100010: (b"PN", b"Doe^Jane"),
        0x00100020: (b"LO", b"PID-0001"),
        0x00100030: (b"DA", b"19700101"),
        0x00180050: (b"DS", b"2.5 "),
        0x00181120: (b"DS", b"0 "),
        0x00181210: (b"SH", b"B30f"),
        0x0020000D: (b"UI", even(uid + b".1", b"\x00")),
        0x0020000E: (b"UI", even(uid + b".2", b"\x00")),
        0x00200011: (b"IS", b"2 "),
        0x00200013: (b"IS", b"7 "),
        0x00200032: (b"DS", b"-100\\-120.5\\-50.25 "),
        0x00200037: (b"DS", b"1\\0\\0\\0\\1\\0 "),
        0x00280002: (b"US", struct.pack("<H", 1)),
        0x00280010: (b"US", struct.pack("<H", rows)),
        0x00280011: (b"US", struct.pack("<H", columns)),
        0x00280030: (b"DS", b"0.8\\0.7 "),
        0x00280100: (b"US", struct.pack("<H", 16)),
        0x00280101: (b"US", struct.pack("<H", 12)),
        0x00280103: (b"US", struct.pack("<H", 0)),
        0x00281052: (b"DS", b"-1024 "),
        0x00281053: (b"DS", b"1 "),
    }


def dicom_bytes(
    elements: dict[int, tuple[bytes, bytes]],
    *,
    syntax: str = EXPLICIT,
    extra: bytes = b"",
    pixels: bool = True,
    preamble: bool = True,
    sort: bool = True,
) -> bytes:
    """A file: preamble, explicit-VR meta group, then ``elements`` (tag -> (VR, raw value)) in ``syntax``'s VR
    encoding, ``extra`` raw bytes (more elements), pixel data."""
    explicit = syntax != IMPLICIT
    meta_body = (
        element(0x00020001, b"OB", b"\x00\x01")
        + element(0x00020002, b"UI", even(CT, b"\x00"))
        + element(0x00020003, b"UI", even(b"1.2.826.0.1.3680043.8.498.1.7", b"\x00"))
        + element(0x00020010, b"UI", even(syntax.encode(), b"\x00"))
    )
    meta = element(0x00020000, b"UL", struct.pack("<I", len(meta_body))) + meta_body
    items = sorted(elements.items()) if sort else list(elements.items())
    body = b"".join(element(tag, vr, value, explicit=explicit) for tag, (vr, value) in items) + extra
    if pixels:
        rows = (
            struct.unpack("<H", elements[0x00280010][1])[0] if len(elements.get(0x00280010, (b"", b""))[1]) == 2 else 4
        )
        columns = (
            struct.unpack("<H", elements[0x00280011][1])[0] if len(elements.get(0x00280011, (b"", b""))[1]) == 2 else 4
        )
        body += element(0x7FE00010, b"OW", b"\x00\x04" * (rows * columns), explicit=explicit)
    return (b"\x00" * 128 + b"DICM" if preamble else b"") + meta + body


def records(root: Path, paths: list[Path], monkeypatch: pytest.MonkeyPatch, *, lean: bool) -> list[dd.FileRecord]:
    with monkeypatch.context() as patch:
        if not lean:
            patch.setattr(dd, "lean_header", lambda data: None)
        return dd._read_chunk(root, paths, "StudyInstanceUID", True)


def assert_same(root: Path, paths: list[Path], monkeypatch: pytest.MonkeyPatch) -> int:
    """Both readers give the same records; returns how many files the lean reader read."""
    by_lean = records(root, paths, monkeypatch, lean=True)
    by_pydicom = records(root, paths, monkeypatch, lean=False)
    for path, a, b in zip(paths, by_lean, by_pydicom, strict=True):
        assert repr(a) == repr(b), f"{path.name}: lean {a!r}\n  pydicom {b!r}"  # repr: NaN equals NaN
    return sum(dd.lean_header(path.read_bytes()) is not None for path in paths)


VALUE_VARIANTS: list[tuple[int, bytes, bytes]] = [
    # (tag, VR, raw value)
    (0x00281053, b"DS", b"1.5"),
    (0x00281053, b"DS", b" 1.5"),
    (0x00281053, b"DS", b"+1.5"),
    (0x00281053, b"DS", b"1e0 "),
    (0x00281053, b"DS", b".5"),
    (0x00281053, b"DS", b"5."),
    (0x00281053, b"DS", b"abc "),
    (0x00281053, b"DS", b""),
    (0x00281053, b"DS", b"  "),
    (0x00281053, b"DS", b"1\\2 "),
    (0x00281053, b"DS", b"nan "),
    (0x00281053, b"DS", b"1.23456789012345678 "),
    (0x00281052, b"DS", b"-1024.0\x00"),
    (0x00281052, b"DS", b"- 1024"),
    (0x00180050, b"DS", b"1\\\\2 "),
    (0x00200032, b"DS", b" -100\\ -120.5\\ -50.25"),
    (0x00200032, b"DS", b"-100\\-120.5"),
    (0x00200032, b"DS", b"-100"),
    (0x00200032, b"DS", b"-100\\\\-50.25 "),
    (0x00280030, b"DS", b"0.8"),
    (0x00200011, b"IS", b"+3"),
    (0x00200011, b"IS", b" 3"),
    (0x00200011, b"IS", b"3.0 "),
    (0x00200011, b"IS", b""),
    (0x00200011, b"IS", b"-2"),
    (0x00200011, b"IS", b"1\\2 "),
    (0x00200011, b"IS", b"12345678901234 "),
    (0x00280008, b"IS", b"1 "),
    (0x00280008, b"IS", b"0 "),
    (0x00280008, b"IS", b"3 "),
    (0x00100020, b"LO", b" PID-1"),
    (0x00100020, b"LO", b"PID-1 "),
    (0x00100020, b"LO", b"PID\\1 "),
    (0x00100020, b"LO", b""),
    (0x00100020, b"LO", b"P\xe9D1"),
    (0x00100020, b"LO", b"P\x1bD1"),
    (0x00100010, b"PN", b"Doe^John=Ideo^Graphic "),
    (0x00100010, b"PN", b"Doe^John\\Roe^Ann "),
    (0x00100010, b"PN", b"  "),
    (0x00080008, b"CS", b"ORIGINAL"),
    (0x00080008, b"CS", b"ORIGINAL\\ PRIMARY"),
    (0x00080008, b"CS", b"ORIGINAL\\\\AXIAL "),
    (0x00080060, b"CS", b" CT "),
    (0x00080060, b"CS", b"ct"),
    (0x00181210, b"SH", b"B30f\\3 "),
    (0x0020000D, b"UI", b"1.2.3 "),
    (0x0020000D, b"UI", b""),
    (0x0020000D, b"UI", b"1.2.3\\4.5 "),
    (0x0020000E, b"UI", b""),
    (0x00080016, b"UI", b""),
    (0x00280010, b"US", b""),
    (0x00280010, b"US", struct.pack("<HH", 4, 4)),
    (0x00280100, b"US", struct.pack("<H", 8)),
    (0x00280103, b"US", struct.pack("<H", 1)),
    (0x00280120, b"SS", struct.pack("<h", -2000)),
    (0x00280120, b"US", struct.pack("<H", 63536)),
    (0x00280120, b"OW", struct.pack("<H", 1)),
    (0x00280121, b"SS", struct.pack("<h", -1000)),
    (0x00080005, b"CS", b"ISO_IR 192"),
    (0x00080005, b"CS", b"ISO 2022 IR 87"),
    (0x00080005, b"CS", b"\\ISO 2022 IR 87"),
    (0x00080005, b"CS", b""),
    (0x00281053, b"LO", b"1 "),  # a VR other than the dictionary's
    (0x00280010, b"SS", struct.pack("<h", 4)),
]


@pytest.mark.parametrize("syntax", [EXPLICIT, IMPLICIT])
def test_lean_reader_agrees_with_pydicom_on_odd_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax: str
) -> None:
    paths = [tmp_path / "plain.dcm"]
    paths[0].write_bytes(dicom_bytes(base_elements(), syntax=syntax))
    for index, (tag, vr, value) in enumerate(VALUE_VARIANTS):
        elements = base_elements()
        elements[tag] = (vr, value + (b" " if len(value) % 2 else b""))
        path = tmp_path / f"v{index:03d}.dcm"
        path.write_bytes(dicom_bytes(elements, syntax=syntax))
        paths.append(path)
    for name, drop in (("no-rows", 0x00280010), ("no-series", 0x0020000E), ("no-sop-class", 0x00080016)):
        elements = base_elements()
        del elements[drop]
        (tmp_path / f"{name}.dcm").write_bytes(dicom_bytes(elements, syntax=syntax))
        paths.append(tmp_path / f"{name}.dcm")
    for representation in (0, 1, None):  # implicit: PixelPaddingValue's US / SS follows PixelRepresentation
        elements = base_elements()
        elements[0x00280120] = (b"US", struct.pack("<H", 0xF830))
        if representation is None:
            del elements[0x00280103]
        else:
            elements[0x00280103] = (b"US", struct.pack("<H", representation))
        (tmp_path / f"padding-{representation}.dcm").write_bytes(dicom_bytes(elements, syntax=syntax))
        paths.append(tmp_path / f"padding-{representation}.dcm")
    read_lean = assert_same(tmp_path, paths, monkeypatch)
    assert dd.lean_header(paths[0].read_bytes()) is not None  # the plain file is the lean case
    assert read_lean > len(paths) // 3  # and so are most variants (the rest declined, read by pydicom)


def sequence_extras(explicit: bool) -> dict[str, bytes]:
    item = element(0x00081150, b"UI", even(CT, b"\x00"), explicit=explicit) + element(
        0x00081155, b"UI", b"1.2.3\x00", explicit=explicit
    )
    defined_item = struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item
    undefined_item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + item + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    implicit_item = (
        struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + element(0x00081155, b"UI", b"1.2.3\x00", explicit=False)
        + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    )
    return {
        "sq-defined": element(0x00291010, b"SQ", defined_item, explicit=explicit),
        "sq-undefined": element(0x00291010, b"SQ", undefined_item + defined_item, explicit=explicit, undefined=True)
        + end,
        "sq-empty-undefined": element(0x00291010, b"SQ", b"", explicit=explicit, undefined=True) + end,
        "un-undefined": element(0x00291010, b"UN", implicit_item, explicit=explicit, undefined=True) + end,
        "sq-unterminated": element(0x00291010, b"SQ", undefined_item, explicit=explicit, undefined=True),
        "functional-groups": element(0x52009229, b"SQ", defined_item, explicit=explicit),
        "functional-groups-undefined": element(0x52009230, b"SQ", undefined_item, explicit=explicit, undefined=True)
        + end,
        "private-ob": element(0x00291020, b"OB", b"\x01\x02\x03\x04", explicit=explicit),
        "bad-vr": struct.pack("<HH2sH", 0x0029, 0x1010, b"??", 2) + b"ab" if explicit else b"",
    }


@pytest.mark.parametrize("syntax", [EXPLICIT, IMPLICIT])
def test_lean_reader_agrees_with_pydicom_on_structure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax: str
) -> None:
    explicit = syntax != IMPLICIT
    paths = []

    def write(name: str, data: bytes) -> None:
        paths.append(tmp_path / f"{name}.dcm")
        paths[-1].write_bytes(data)

    for name, extra in sequence_extras(explicit).items():
        write(name, dicom_bytes(base_elements(), syntax=syntax, extra=extra))
    write("no-preamble", dicom_bytes(base_elements(), syntax=syntax, preamble=False))
    write("no-pixels", dicom_bytes(base_elements(), syntax=syntax, pixels=False))
    write(
        "after-pixels",
        dicom_bytes(base_elements(), syntax=syntax) + element(0xFFFAFFFA, b"SQ", b"", explicit=explicit),
    )
    write(
        "trailing-element-no-pixels",
        dicom_bytes(base_elements(), syntax=syntax, pixels=False, extra=element(0x7FE10010, b"OB", b"ab")),
    )
    unsorted = dict(reversed(list(base_elements().items())))
    write("unsorted", dicom_bytes(unsorted, syntax=syntax, sort=False))
    write("big-endian-syntax", dicom_bytes(base_elements(), syntax="1.2.840.10008.1.2.2"))
    write(
        "explicit-syntax-implicit-data",
        dicom_bytes(base_elements(), syntax=IMPLICIT).replace(b"1.2.840.10008.1.2\x00", b"1.2.840.10008.1.2.1\x00"),
    )
    whole = dicom_bytes(base_elements(), syntax=syntax, extra=sequence_extras(explicit)["sq-undefined"])
    for cut in range(132, len(whole), 5):  # truncated anywhere in the header (and in the pixels)
        write(f"cut-{cut:05d}", whole[:cut])
    assert_same(tmp_path, paths, monkeypatch)
    for name in ("sq-defined", "sq-undefined", "un-undefined", "private-ob"):
        assert dd.lean_header((tmp_path / f"{name}.dcm").read_bytes()) is not None, name
    for name in ("functional-groups", "no-preamble", "big-endian-syntax", "sq-unterminated", "unsorted"):
        assert dd.lean_header((tmp_path / f"{name}.dcm").read_bytes()) is None, name


def test_lean_reader_agrees_with_pydicom_on_generated_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.preprocessing.dicom_factory import write_ct_series, write_enhanced_ct

    write_ct_series(tmp_path / "a", n_slices=3, padding_value=-2000, pixel_representation=1, bits_stored=16)
    import pydicom
    from pydicom.uid import ImplicitVRLittleEndian

    for path in write_ct_series(tmp_path / "b", n_slices=3, padding_value=0).files:  # as implicit VR files
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    write_ct_series(tmp_path / "c", n_slices=2, transfer_syntax="1.2.840.10008.1.2.5")
    write_ct_series(tmp_path / "d", n_slices=2, phi={"PatientName": "Müller^Jürgen", "PatientID": "x"})
    write_enhanced_ct(tmp_path / "e" / "enhanced.dcm", n_frames=3)
    paths = sorted(path for path in tmp_path.rglob("*") if path.is_file())
    assert assert_same(tmp_path, paths, monkeypatch) >= 8


def corpus_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file() and path.stat().st_size < 64 << 20)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data absent")
def test_lean_reader_agrees_with_pydicom_on_the_shared_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = corpus_files(SHARED)
    assert assert_same(SHARED, paths, monkeypatch) >= 20  # the real CT series are lean-read


def test_lean_reader_agrees_with_pydicom_on_its_test_files(monkeypatch: pytest.MonkeyPatch) -> None:
    import pydicom

    root = Path(pydicom.__file__).parent / "data" / "test_files"
    if not root.is_dir():
        pytest.skip("pydicom's test files are not installed")
    assert_same(root, corpus_files(root), monkeypatch)


def test_a_plain_tree_never_imports_pydicom(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.preprocessing.dicom_factory import write_ct_series

    write_ct_series(tmp_path / "s", n_slices=3)
    code = (
        "import sys; from preprocessing.dicom_discovery import scan_dicom_tree; "
        f"d = scan_dicom_tree({str(tmp_path)!r}, hash_files=True); "
        "assert len(d.studies) == 1 and sum(len(s.slices) for s in d.studies[0].series.values()) == 3; "
        "print('pydicom' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
