"""Hostile zips (docs/formats.md#hostile-containers): torch archives and ``.npz``, untrusted bytes.

Archives are assembled byte by byte here (local headers, central directory, end record), so
every field can lie: names that escape (``../``, absolute, drive letters, NUL, backslash),
duplicate names, two directory entries pointing at the same bytes (the overlapping-entry zip
bomb, CVE-2024-0450), sizes larger than the file, a deflated member claiming a huge size or
inflating past what it declares, the encryption flag, unknown compression methods, bad CRCs,
headers outside the file. Each must raise ``satchel.FormatError``, both through
``satchel.load`` (a torch-like zip whose first member is ``archive/data.pkl``, or an
``.npz``-like zip) and directly through ``satchel.formats._codecs.zip.zip_members`` /
``read_member``, and none may allocate much memory (``tracemalloc`` peak).
"""

from __future__ import annotations

import contextlib
import functools
import io
import struct
import tracemalloc
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

import hostile_cases as hc
import satchel
from satchel.formats._codecs.zip import MAX_INFLATED, central_names, read_member, zip_members

PICKLE = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s."  # {'a': 1}
# {'t': tensor of 16 float32 zeros in storage '0'}, as torch.save's data.pkl spells it.
TENSOR_PICKLE = (
    b"\x80\x02}X\x01\x00\x00\x00tctorch._utils\n_rebuild_tensor_v2\n(("
    b"X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x10tQ"
    b"K\x00(K\x10t(K\x01t\x89ccollections\nOrderedDict\n)RtRs."
)


def _npy_bytes() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([1.5, -2.0], dtype="<f4"), allow_pickle=False)
    return buf.getvalue()


NPY = _npy_bytes()
PEAK_LIMIT = 64 << 20


@dataclass(frozen=True)
class Entry:
    """One member as written; any field left ``None`` is computed honestly."""

    name: str | bytes
    payload: bytes  # uncompressed bytes
    method: int = 0
    flags: int = 0
    crc: int | None = None
    csize: int | None = None  # central directory compressed size
    usize: int | None = None  # central directory uncompressed size
    offset: int | None = None  # central directory local-header offset
    local_name: str | bytes | None = None
    data: bytes | None = None  # bytes written after the local header (default: compressed)
    write_local: bool = True


def _b(name: str | bytes) -> bytes:
    return name.encode("utf-8") if isinstance(name, str) else name


def _compress(payload: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(payload) + c.flush()


def build_zip(entries: list[Entry], *, cd_offset: int | None = None, trailer: bytes = b"") -> bytes:
    """A zip with exactly the given (possibly lying) fields."""
    out = bytearray()
    central = bytearray()
    for e in entries:
        data = (
            e.data if e.data is not None else (_compress(e.payload) if e.method == 8 else e.payload)
        )
        crc = zlib.crc32(e.payload) if e.crc is None else e.crc
        csize = len(data) if e.csize is None else e.csize
        usize = len(e.payload) if e.usize is None else e.usize
        local_at = len(out)
        if e.write_local:
            lname = _b(e.local_name if e.local_name is not None else e.name)
            out += struct.pack(
                "<4s5H3L2H", b"PK\x03\x04", 20, e.flags, e.method, 0, 0, crc,
                len(data), len(e.payload), len(lname), 0,
            )  # fmt: skip
            out += lname + data
        name = _b(e.name)
        central += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, e.flags, e.method, 0, 0, crc,
            csize & 0xFFFFFFFF, usize & 0xFFFFFFFF, len(name), 0, 0, 0, 0, 0,
            (local_at if e.offset is None else e.offset) & 0xFFFFFFFF,
        )  # fmt: skip
        central += name
    start = len(out) if cd_offset is None else cd_offset
    out += central
    out += struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central),
        start & 0xFFFFFFFF, 0,
    )  # fmt: skip
    return bytes(out) + trailer


def torch_like(*extra: Entry, first: Entry | None = None) -> list[Entry]:
    """``archive/data.pkl`` first (so satchel detects a torch archive), then ``extra``."""
    return [
        first or Entry("archive/data.pkl", PICKLE),
        Entry("archive/byteorder", b"little"),
        *extra,
        Entry("archive/version", b"3\n"),
    ]


def _u8(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype=np.uint8)


def _write(tmp_path: Path, raw: bytes, name: str = "x.pt") -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def _refused_everywhere(
    tmp_path: Path, raw: bytes, *, name: str = "x.pt", match: str | None = None
) -> None:
    """FormatError from zip_members(+read_member of each member) and from satchel.load/open."""
    tracemalloc.start()
    try:
        with pytest.raises(satchel.FormatError, match=match):
            members = zip_members(_u8(raw), where="t")
            for m in members.values():
                read_member(_u8(raw), m, where="t", check_crc=True)
        path = _write(tmp_path, raw, name)
        with pytest.raises(satchel.FormatError, match=match):
            satchel.load(path)
        with pytest.raises(satchel.FormatError, match=match):
            satchel.open(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < PEAK_LIMIT, f"peak allocation {peak >> 20} MiB"


# -- the builder itself produces archives satchel and zipfile accept -----------------------------
def test_honest_torch_like_zip_with_a_storage_loads(tmp_path: Path) -> None:
    raw = build_zip(
        torch_like(
            Entry("archive/data/0", b"\0" * 64), first=Entry("archive/data.pkl", TENSOR_PICKLE)
        )
    )
    obj = satchel.load(_write(tmp_path, raw))
    np.testing.assert_array_equal(obj["t"], np.zeros(16, dtype=np.float32))


def test_honest_torch_like_zip_loads(tmp_path: Path) -> None:
    raw = build_zip(torch_like())
    path = _write(tmp_path, raw)
    assert satchel.detect(path) == "torch"
    assert satchel.load(path) == {"a": 1}
    members = zip_members(_u8(raw), where="t")
    assert list(members) == ["archive/data.pkl", "archive/byteorder", "archive/version"]
    assert (
        bytes(read_member(_u8(raw), members["archive/data.pkl"], where="t", check_crc=True))
        == PICKLE
    )


def test_honest_npz_like_zip_loads(tmp_path: Path) -> None:
    for method in (0, 8):
        raw = build_zip([Entry("w.npy", NPY, method=method)])
        path = _write(tmp_path, raw, f"ok{method}.npz")
        assert satchel.detect(path) == "npz"
        np.testing.assert_array_equal(satchel.load(path)["w"], np.array([1.5, -2.0], dtype="<f4"))


# -- names ---------------------------------------------------------------------------------------
UNSAFE_NAMES = [
    "../evil",
    "archive/../../etc/passwd",
    "archive/data/../../../x",
    "/etc/passwd",
    "/archive/data/0",
    "C:/Windows/x",
    "c:evil",
    "archive\\..\\evil",
    "archive/da\x00ta/0",
    "..",
]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_unsafe_member_name_is_refused(tmp_path: Path, name: str) -> None:
    _refused_everywhere(tmp_path, build_zip(torch_like(Entry(name, b"data"))), match="unsafe")


@pytest.mark.parametrize("name", ["../data.pkl", "/archive/data.pkl", "..\\archive\\data.pkl"])
def test_unsafe_first_member_name_is_refused(tmp_path: Path, name: str) -> None:
    raw = build_zip(torch_like(first=Entry(name, PICKLE)))
    with pytest.raises(satchel.FormatError):
        zip_members(_u8(raw), where="t")
    with pytest.raises(satchel.FormatError):
        satchel.load(_write(tmp_path, raw))


@pytest.mark.parametrize("name", ["../w.npy", "/w.npy", "a/../../w.npy"])
def test_unsafe_npz_member_name_is_refused(tmp_path: Path, name: str) -> None:
    raw = build_zip([Entry("ok.npy", NPY), Entry(name, NPY)])
    _refused_everywhere(tmp_path, raw, name="x.npz", match="unsafe")


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    evil = b"\x80\x02cposix\nsystem\nX\x05\x00\x00\x00touch\x85R."
    raw = build_zip(torch_like(Entry("archive/data.pkl", evil)))
    _refused_everywhere(tmp_path, raw, match="twice")


def test_duplicate_npz_members_are_refused(tmp_path: Path) -> None:
    raw = build_zip([Entry("w.npy", NPY), Entry("w.npy", NPY)])
    _refused_everywhere(tmp_path, raw, name="x.npz", match="twice")


# -- overlapping entries (CVE-2024-0450) -----------------------------------------------------------
def test_two_directory_entries_on_the_same_bytes_are_refused(tmp_path: Path) -> None:
    entries = torch_like(Entry("archive/data/0", b"\0" * 64))
    raw = build_zip(entries)
    members = zip_members(_u8(raw), where="t")
    shared_offset = _local_offset(raw, "archive/data/0")
    assert members["archive/data/0"].size == 64
    alias = Entry("archive/data/1", b"\0" * 64, offset=shared_offset, write_local=False)
    raw = build_zip([*entries, alias])
    _refused_everywhere(tmp_path, raw, match="overlap")


def test_quoted_overlap_bomb_is_refused(tmp_path: Path) -> None:
    """The bamsoftware construction: one entry's data contains the next entry's local header."""
    inner = build_zip([Entry("archive/data/1", b"A" * 1000)])
    inner_local = inner[: inner.index(b"PK\x01\x02")]
    first_data = b"B" * 100 + inner_local
    entries = torch_like(Entry("archive/data/0", first_data))
    start0 = _local_offset(build_zip(entries), "archive/data/0")
    second_at = start0 + 30 + len("archive/data/0") + 100
    assert build_zip(entries)[second_at : second_at + 4] == b"PK\x03\x04"
    alias = Entry("archive/data/1", b"A" * 1000, offset=second_at, write_local=False)
    _refused_everywhere(tmp_path, build_zip([*entries, alias]), match="overlap")


def _local_offset(raw: bytes, name: str) -> int:
    pos = raw.find(b"PK\x03\x04")
    while pos >= 0:
        n = struct.unpack_from("<H", raw, pos + 26)[0]
        if raw[pos + 30 : pos + 30 + n] == name.encode():
            return pos
        pos = raw.find(b"PK\x03\x04", pos + 4)
    raise AssertionError(name)


# -- sizes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("csize", [2**31, 2**32 - 1, 10_000])
def test_member_larger_than_the_file_is_refused(tmp_path: Path, csize: int) -> None:
    raw = build_zip(torch_like(Entry("archive/data/0", b"\0" * 16, csize=csize, usize=csize)))
    _refused_everywhere(tmp_path, raw)


def _with_storage(storage: Entry) -> bytes:
    return build_zip(torch_like(storage, first=Entry("archive/data.pkl", TENSOR_PICKLE)))


def test_stored_member_with_two_sizes_is_refused(tmp_path: Path) -> None:
    _refused_everywhere(tmp_path, _with_storage(Entry("archive/data/0", b"\0" * 64, usize=2**31)))


def test_local_header_outside_the_file_is_refused(tmp_path: Path) -> None:
    raw = build_zip(torch_like(Entry("archive/data/0", b"\0" * 16, offset=2**31, write_local=True)))
    _refused_everywhere(tmp_path, raw)


def test_local_header_without_magic_is_refused(tmp_path: Path) -> None:
    raw = build_zip(torch_like(Entry("archive/data/0", b"\0" * 64, offset=40)))
    _refused_everywhere(tmp_path, raw)


def test_central_directory_offset_outside_the_file_is_refused(tmp_path: Path) -> None:
    raw = build_zip(torch_like(), cd_offset=2**31)
    _refused_everywhere(tmp_path, raw)


def test_truncated_archive_is_refused(tmp_path: Path) -> None:
    raw = build_zip(torch_like(Entry("archive/data/0", b"\1" * 256)))
    for cut in (len(raw) - 1, len(raw) - 22, len(raw) // 2, 40):
        with pytest.raises(satchel.FormatError):
            zip_members(_u8(raw[:cut]), where="t")
        path = _write(tmp_path, raw[:cut], f"cut{cut}.pt")
        with pytest.raises(satchel.SatchelError):
            satchel.load(path)


def test_appended_bytes_after_end_record_are_tolerated_or_refused_cleanly(tmp_path: Path) -> None:
    raw = build_zip(torch_like(), trailer=b"\0" * 7)
    path = _write(tmp_path, raw)
    with contextlib.suppress(satchel.FormatError):
        assert satchel.load(path) == {"a": 1}


# -- compression -----------------------------------------------------------------------------------
def test_deflated_member_claiming_huge_size_is_refused(tmp_path: Path) -> None:
    payload = NPY
    raw = build_zip([Entry("w.npy", payload, method=8, usize=0xFFFFFFFF)])
    _refused_everywhere(tmp_path, raw, name="bomb.npz")


def test_deflated_member_over_the_cap_is_refused_before_inflating() -> None:
    raw = build_zip([Entry("w.npy", NPY, method=8)])
    members = zip_members(_u8(raw), where="t")
    huge = replace(members["w.npy"], size=MAX_INFLATED + 1)
    tracemalloc.start()
    try:
        with pytest.raises(satchel.FormatError, match="claims"):
            read_member(_u8(raw), huge, where="t")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < PEAK_LIMIT


@functools.cache
def _zeros_bomb() -> bytes:
    """200 MiB of zeros as a raw deflate stream (about 200 KiB), built in 1 MiB steps."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = b"\0" * (1 << 20)
    return b"".join(c.compress(chunk) for _ in range(200)) + c.flush()


def test_deflate_bomb_inflating_past_its_declared_size_is_refused(tmp_path: Path) -> None:
    """200 MiB of zeros deflate to ~200 KiB; the member declares 1 KiB: stop at 1 KiB + 1."""
    zeros = _zeros_bomb()
    entry = Entry("w.npy", b"\0" * 1024, method=8, data=zeros, crc=0)
    raw = build_zip([entry])
    _refused_everywhere(tmp_path, raw, name="bomb.npz")


def test_torch_storage_deflate_bomb_is_refused(tmp_path: Path) -> None:
    zeros = _zeros_bomb()
    entry = Entry("archive/data/0", b"\0" * 64, method=8, data=zeros, crc=0)
    _refused_everywhere(tmp_path, _with_storage(entry))


def test_deflated_member_with_bad_crc_is_refused(tmp_path: Path) -> None:
    raw = build_zip([Entry("w.npy", NPY, method=8, crc=zlib.crc32(NPY) ^ 1)])
    _refused_everywhere(tmp_path, raw, name="crc.npz", match="CRC")


def test_corrupt_deflate_stream_is_refused(tmp_path: Path) -> None:
    raw = build_zip([Entry("w.npy", NPY, method=8, data=b"\xff" * 40, csize=40)])
    _refused_everywhere(tmp_path, raw, name="corrupt.npz")


@pytest.mark.parametrize("flags", [0x1, 0x41, 0x809])
def test_encrypted_member_is_refused(tmp_path: Path, flags: int) -> None:
    raw = build_zip(torch_like(Entry("archive/data/0", b"\0" * 16, flags=flags)))
    _refused_everywhere(tmp_path, raw, match="encrypted")


def test_encrypted_npz_member_is_refused(tmp_path: Path) -> None:
    raw = build_zip([Entry("w.npy", NPY, flags=0x1)])
    _refused_everywhere(tmp_path, raw, name="enc.npz", match="encrypted")


@pytest.mark.parametrize("method", [1, 6, 9, 12, 14, 93, 95, 98, 99, 0xFFFF])
def test_unknown_compression_is_refused(tmp_path: Path, method: int) -> None:
    raw = build_zip(torch_like(Entry("archive/data/0", b"\0" * 16, method=method)))
    _refused_everywhere(tmp_path, raw, match="compression")


def test_unknown_compression_on_the_pickle_is_refused(tmp_path: Path) -> None:
    raw = build_zip(torch_like(first=Entry("archive/data.pkl", PICKLE, method=12)))
    _refused_everywhere(tmp_path, raw, match="compression")


# -- whole-archive failure and parser differentials (rules Z1, Z2) --------------------------------
def test_one_bad_member_fails_the_whole_load(tmp_path: Path) -> None:
    """A damaged unrelated member must not be skipped while data.pkl is read by name."""
    raw = build_zip(torch_like(Entry("archive/zzz_unused", b"x" * 32, method=99)))
    _refused_everywhere(tmp_path, raw)


@pytest.mark.parametrize("damage", ["two sizes", "deflate bomb", "corrupt deflate"])
def test_unreadable_unreferenced_member_fails_the_whole_load(tmp_path: Path, damage: str) -> None:
    """Rule Z1: an unreadable member fails the load even if the pickle never uses it."""
    entry = {
        "two sizes": Entry("archive/data/9", b"\0" * 64, usize=2**31),
        "deflate bomb": Entry("archive/data/9", b"\0" * 64, method=8, data=_zeros_bomb(), crc=0),
        "corrupt deflate": Entry(
            "archive/data/9", b"\0" * 64, method=8, data=b"\xff" * 40, csize=40
        ),
    }[damage]
    _refused_everywhere(tmp_path, build_zip(torch_like(entry)))


def test_local_name_differing_from_directory_name_is_refused(tmp_path: Path) -> None:
    """A scanner walking local headers sees another name than a reader of the directory."""
    raw = build_zip(torch_like(Entry("archive/data/0", b"\0" * 16, local_name="archive/data/X")))
    _refused_everywhere(tmp_path, raw)


# -- central_names: the sniffer's look at the directory (never raises, never reads members) -------
def test_central_names_lists_the_directory_in_order(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as z:
        for name in ("m/extra/x.txt", "m/data.pkl", "m/data/0"):
            z.writestr(name, b"\0" * 100)
    assert central_names(path) == ["m/extra/x.txt", "m/data.pkl", "m/data/0"]
    assert central_names(path, limit=1) == ["m/extra/x.txt"]


@pytest.mark.parametrize("damage", ["not a zip", "directory past the end", "huge directory",
                                    "bad entry magic", "truncated"])  # fmt: skip
def test_central_names_of_a_damaged_zip_is_none(tmp_path: Path, damage: str) -> None:
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("m/data.pkl", PICKLE)
    raw = bytearray(good.read_bytes())
    eocd = raw.rfind(b"PK\x05\x06")
    if damage == "not a zip":
        raw = bytearray(b"hello" * 20)
    elif damage == "directory past the end":
        raw[eocd + 16 : eocd + 20] = (len(raw) + 10).to_bytes(4, "little")
    elif damage == "huge directory":
        raw[eocd + 12 : eocd + 16] = (0xFFFFFFF0).to_bytes(4, "little")
    elif damage == "bad entry magic":
        at = int.from_bytes(raw[eocd + 16 : eocd + 20], "little")
        raw[at : at + 4] = b"XXXX"
    else:
        raw = raw[: eocd + 10]
    path = tmp_path / "bad.zip"
    path.write_bytes(bytes(raw))
    assert central_names(path) is None


# -- issue 9 item 7: bombs inside members, bounded before anything is inflated ---------------------
# safetensors' attacks/numpy_dos: a 4.9 MB .npz whose member inflates to 5 GB of zeros (no .npy
# header at all) took the whole 5 GB before the header was looked at. Deflate expands at most
# 1032:1, so a member's declared size must fit that ratio of its compressed size; an .npz
# member's declared size must equal its .npy header plus the array bytes that header declares.
CONFINED = 1 << 30  # RLIMIT_AS of the child that loads each bomb
BOMB = 3 << 30  # bytes each bomb inflates to: three times the child's whole address space


@functools.cache
def _zeros_stream(n_mib: int) -> bytes:
    """A raw deflate stream of ``n_mib`` MiB of zeros (~1 KiB per MiB), built in O(1) compression:
    a full flush makes each 1 MiB block byte-aligned and independent, so one repeats."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = c.compress(b"\0" * (1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    return piece * n_mib + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


def _npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    header += " " * ((-(10 + len(header) + 1)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1")


def _bomb_npz(tmp_path: Path, name: str, *, header: bytes, data: bytes, usize: int) -> Path:
    entry = Entry("weights.npy", b"", method=8, data=data, usize=usize, crc=0)
    return _write(tmp_path, build_zip([entry]), name)


def _bomb_cases(tmp_path: Path) -> dict[str, Path]:
    zeros = _zeros_stream(BOMB >> 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    header = _npy_header((BOMB,))
    # The header, then the same zeros: compressed apart and joined (each part byte-aligned).
    with_header = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH) + zeros
    tiny = _compress(header + b"\0" * 1024)
    return {
        # numpy_dos itself: zeros only, the declared size honest for the stream.
        "numpy_dos": _bomb_npz(tmp_path, "dos.npz", header=b"", data=zeros, usize=BOMB),
        # A valid header declaring the huge array, over a tiny payload: sizes past 1032:1.
        "ratio": _bomb_npz(
            tmp_path, "ratio.npz", header=header, data=tiny, usize=len(header) + BOMB
        ),
        # The zip declares a small member, the header a huge array: they disagree.
        "disagree": _bomb_npz(
            tmp_path, "disagree.npz", header=header, data=with_header, usize=len(header) + 64
        ),
        # Everything honest: a real 3 GiB array of zeros. Legitimate, but it cannot fit in the
        # child's 1 GiB: a clean FormatError, never a bare MemoryError.
        "honest": _bomb_npz(
            tmp_path, "honest.npz", header=header, data=with_header, usize=len(header) + BOMB
        ),
    }


def test_npz_bombs_are_refused_before_inflating_under_a_memory_limit(tmp_path: Path) -> None:
    cases = _bomb_cases(tmp_path)
    report = hc.run_confined([(p, {}) for p in cases.values()], limit=CONFINED, timeout=120)
    assert "crash" not in report, report
    for name, res in zip(cases, report["results"], strict=True):
        assert res["outcome"] == "rejected", (name, res)
        assert res["error"] == "FormatError", (name, res)
        assert res["seconds"] < 10, (name, res)
    by_name = dict(zip(cases, report["results"], strict=True))
    for name in ("numpy_dos", "ratio", "disagree"):  # refused after inflating a few KiB at most
        assert by_name[name]["peak_rss"] < 512 << 20, (name, by_name[name])
    assert "weights.npy" in by_name["numpy_dos"]["message"]
    assert "1032" in by_name["ratio"]["message"]
    assert "header" in by_name["disagree"]["message"]


def test_deflated_member_past_the_deflate_ratio_is_refused_by_zip_members() -> None:
    raw = build_zip([Entry("w.npy", NPY, method=8, usize=len(_compress(NPY)) * 1032 + 1)])
    with pytest.raises(satchel.FormatError, match="1032"):
        zip_members(_u8(raw), where="t")


def test_inflating_stops_at_the_declared_size_and_counts_memory() -> None:
    """A member declaring 64 MiB of a 200 MiB stream: refused, peak about the declared size."""
    entry = Entry("w.npy", b"", method=8, data=_zeros_bomb(), usize=64 << 20, crc=0)
    raw = build_zip([entry])
    member = zip_members(_u8(raw), where="t")["w.npy"]
    tracemalloc.start()
    try:
        with pytest.raises(satchel.FormatError, match="more"):
            read_member(_u8(raw), member, where="t")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < (64 << 20) + (8 << 20), f"peak allocation {peak >> 20} MiB"


def test_keras_json_member_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    zeros = _zeros_stream(BOMB >> 20)
    raw = build_zip(
        [
            Entry("metadata.json", b"{}"),
            Entry("config.json", b"", method=8, data=zeros, usize=BOMB, crc=0),
            Entry("model.weights.h5", b"\x89HDF\r\n\x1a\n"),
        ]
    )
    path = _write(tmp_path, raw, "m.keras")
    assert satchel.detect(path) == "keras"
    report = hc.run_confined([(path, {})], limit=CONFINED, timeout=60)
    assert "crash" not in report, report
    (res,) = report["results"]
    assert (res["outcome"], res.get("error")) == ("rejected", "FormatError"), res
    assert res["seconds"] < 10, res
