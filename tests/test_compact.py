"""The compact manifest (format version 2, SPEC 3.3 and 3.8-3.11).

Reader clauses are tested on files built here by hand, byte by byte (each bad file starts from
a valid one and breaks one rule); writer clauses by parsing what ``satchel.save`` wrote. The
real ``safetensors`` package reads every version 2 file satchel writes.
"""

from __future__ import annotations

import itertools
import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import torch
import xxhash

import satchel

MANY = 1000  # SPEC 3.8: from this many stored tensors on, writers use version 2


def xxh3(data: bytes | str) -> str:
    return xxhash.xxh3_64_hexdigest(data.encode() if isinstance(data, str) else data)


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def pack(header_text: str, data: bytes) -> bytes:
    raw = header_text.encode()
    raw += b" " * (-(8 + len(raw)) % 64)
    return struct.pack("<Q", len(raw)) + raw + data


WIRE = {"float32": "F32", "int16": "I16", "uint8": "U8", "float64": "F64"}


class Doc:
    """A version 2 file taken apart: header entries (in header order), manifest, data."""

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict[str, str] | None = None):
        self.entries: dict[str, Any] = {}
        self.meta = dict(meta or {})
        chunks, pos = [], 0
        names, dts, shapes, sums = [], [], [], []
        for name, a in arrays.items():
            raw = np.ascontiguousarray(a).tobytes()
            self.entries[name] = {
                "dtype": WIRE[a.dtype.name],
                "shape": list(a.shape),
                "data_offsets": [pos, pos + len(raw)],
            }
            names.append(name)
            dts.append(a.dtype.name)
            shapes.append(list(a.shape))
            sums.append(xxh3(raw))
            chunks.append(raw)
            pos += len(raw)
        self.data = b"".join(chunks)
        n = len(names)
        self.manifest: dict[str, Any] = {
            "version": 2,
            "root": {"$dict": [[name, {"$t": i}] for i, name in enumerate(names)]},
            "leaves": {
                "data": list(range(n)),
                "framework": ["numpy"] * n,
                "kind": ["tensor"] * n,
                "requires_grad": [],
                "views": [],
            },
            "stored": {"names": names, "dtypes": dts, "shapes": shapes, "xxh3": "".join(sums)},
            "metadata": dict(self.meta),
        }

    def header(self, *, text: str | None = None) -> str:
        text = compact(self.manifest) if text is None else text
        meta = {**self.meta, "satchel": text, "satchel.xxh3": xxh3(text)}
        return compact({"__metadata__": meta, **self.entries})

    def write(self, tmp_path: Path, *, text: str | None = None, name: str = "f.satchel") -> Path:
        path = tmp_path / name
        path.write_bytes(pack(self.header(text=text), self.data))
        return path


W = np.arange(6, dtype=np.float32).reshape(2, 3)
N = np.array([1, -2, 3], dtype=np.int16)


def sample() -> Doc:
    return Doc({"w": W, "n": N}, meta={"epoch": "3"})


def rejects(path: Path, *fields: str) -> str:
    """Both readers refuse ``path`` with FormatError (not IntegrityError) naming every field."""
    msg = ""
    for read in (satchel.load, satchel.open):
        with pytest.raises(satchel.FormatError) as info:
            read(path)
        assert not isinstance(info.value, satchel.IntegrityError)
        msg = str(info.value)
        assert str(path) in msg, msg
        for field in fields:
            assert field in msg, f"{field!r} not in {msg!r}"
    return msg


def read_header(path: Path) -> tuple[bytes, dict[str, Any]]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return raw[8 : 8 + n], json.loads(raw[8 : 8 + n])


def manifest_of(path: Path) -> dict[str, Any]:
    return json.loads(read_header(path)[1]["__metadata__"]["satchel"])


def many(count: int = MANY) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {f"layer.{i}.w": torch.randn(4, generator=gen) for i in range(count)}


def test_hand_built_sample_is_valid(tmp_path: Path) -> None:
    out = satchel.load(sample().write(tmp_path))
    assert list(out) == ["w", "n"]
    np.testing.assert_array_equal(out["w"], W)
    np.testing.assert_array_equal(out["n"], N)
    with satchel.open(sample().write(tmp_path)) as ck:
        assert ck.metadata == {"epoch": "3"} and ck.checksummed


# -- 3.3: versions ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [3, 17, 2**40])
def test_spec_3_3_newer_version_says_upgrade(tmp_path: Path, version: int) -> None:
    doc = sample()
    doc.manifest["version"] = version
    msg = rejects(doc.write(tmp_path), "version", "newer satchel", "upgrade")
    assert str(version) in msg


@pytest.mark.parametrize("version", [0, -1, "2", 2.0, True])
def test_spec_3_3_not_a_version_is_damage(tmp_path: Path, version: Any) -> None:
    doc = sample()
    doc.manifest["version"] = version
    msg = rejects(doc.write(tmp_path), "version")
    assert "newer" not in msg


def test_spec_3_3_version_2_keeps_the_members_of_version_1(tmp_path: Path) -> None:
    # A reader of version 1 checks the member names before the version: they must be the same
    # set, so that reader says "version 2 ... upgrade" rather than "unexpected fields".
    path = tmp_path / "m.satchel"
    satchel.save(many(), path)
    m = manifest_of(path)
    assert m["version"] == 2
    assert list(m) == ["version", "root", "leaves", "stored", "metadata"]


# -- 3.8: when writers use it; everyone reads it --------------------------------------------


def test_spec_3_8_writer_uses_version_2_from_1000_tensors(tmp_path: Path) -> None:
    small, big = tmp_path / "small.satchel", tmp_path / "big.satchel"
    satchel.save(many(MANY - 1), small)
    satchel.save(many(MANY), big)
    assert manifest_of(small)["version"] == 1
    assert manifest_of(big)["version"] == 2


def test_spec_3_8_sharded_index_uses_version_2(tmp_path: Path) -> None:
    state = many(MANY)
    satchel.save(state, tmp_path / "ck", max_shard_size=4000)
    index = json.loads((tmp_path / "ck" / "model.safetensors.index.json").read_text())
    assert json.loads(index["satchel"])["version"] == 2
    back = satchel.load(tmp_path / "ck")
    assert list(back) == list(state)
    assert all(torch.equal(back[k], v) for k, v in state.items())


def test_spec_3_8_safetensors_reads_version_2(tmp_path: Path) -> None:
    state = many()
    path = tmp_path / "m.safetensors"
    satchel.save(state, path)
    assert manifest_of(path)["version"] == 2
    flat = safetensors.numpy.load_file(path)
    assert set(flat) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(flat[k], v.numpy())
    with safetensors.safe_open(path, framework="pt") as f:
        assert torch.equal(f.get_tensor("layer.7.w"), state["layer.7.w"])
        assert set(f.metadata()) == {"satchel", "satchel.xxh3"}


def _rich() -> dict[str, Any]:
    """Everything version 1 can say: views, tied tensors, parameters, scalars, bytes, complex."""
    base = torch.arange(12, dtype=torch.float32)
    arr = np.arange(10, dtype=np.int64)
    obj: dict[str, Any] = dict(many())
    obj.update(
        {
            "base": base,
            "view": base[2:8].reshape(2, 3),
            "tied": base,
            "strided": arr[::-3],
            "arr": arr,
            "param": torch.nn.Parameter(torch.ones(3)),
            "frozen": torch.nn.Parameter(torch.ones(2), requires_grad=False),
            "scalar": np.float64(2.5),
            "blob": b"\x00\x01satchel",
            "c128": np.arange(3, dtype=np.complex128) * 1j,
            "nested": {"lr": 0.1, "steps": [1, 2, 3], "name": "adam"},
        }
    )
    return obj


def _same(a: Any, b: Any) -> None:
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b) and a.requires_grad == b.requires_grad
    elif isinstance(a, np.ndarray | np.generic):
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    else:
        assert a == b


def test_spec_3_8_version_2_says_what_version_1_says(tmp_path: Path) -> None:
    obj = _rich()
    path = tmp_path / "rich.satchel"
    satchel.save(obj, path)
    m = manifest_of(path)
    assert m["version"] == 2
    assert m["leaves"]["views"] and m["leaves"]["requires_grad"]
    back = satchel.load(path)
    _same(back, obj)
    # Views and tied tensors share memory again; the frozen parameter stays frozen.
    assert back["tied"] is back["base"]
    assert back["view"].untyped_storage().data_ptr() == back["base"].untyped_storage().data_ptr()
    back["base"][3] = -1
    assert back["view"][0, 1] == -1
    assert back["param"].requires_grad and not back["frozen"].requires_grad
    assert np.shares_memory(back["strided"], back["arr"])


# -- 3.9: stored columns ----------------------------------------------------------------------


def test_spec_3_9_writer_columns_in_data_order(tmp_path: Path) -> None:
    path = tmp_path / "m.satchel"
    satchel.save(many(), path)
    _, header = read_header(path)
    stored = manifest_of(path)["stored"]
    assert set(stored) == {"names", "dtypes", "shapes", "xxh3"}
    by_offset = sorted(
        (k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"]
    )
    assert stored["names"] == by_offset
    raw = path.read_bytes()
    start = 8 + int.from_bytes(raw[:8], "little")
    for i, name in enumerate(stored["names"][:50]):
        a, b = header[name]["data_offsets"]
        assert stored["xxh3"][16 * i : 16 * i + 16] == xxh3(raw[start + a : start + b])
        assert stored["shapes"][i] == header[name]["shape"]
        assert stored["dtypes"][i] == "float32"


def _stored_edit(field: str, value: Any) -> Doc:
    doc = sample()
    doc.manifest["stored"][field] = value
    return doc


@pytest.mark.parametrize(
    ("field", "value", "names"),
    [
        ("names", ["w", "w"], "stored.names"),
        ("names", ["w", 3], "stored.names"),
        ("names", "wn", "stored.names"),
        ("dtypes", ["float32", "int17"], "stored.dtypes"),
        ("dtypes", ["float32"], "stored.dtypes"),
        ("dtypes", ["float32", None], "stored.dtypes"),
        ("shapes", [[2, 3], [-3]], "stored.shapes[1]"),
        ("shapes", [[2, 3], [3.0]], "stored.shapes[1]"),
        ("shapes", [[2, 3], [True, 3]], "stored.shapes[1]"),
        ("shapes", [[2, 3], [1] * 65], "stored.shapes[1]"),
        ("shapes", [[2, 3], 3], "stored.shapes[1]"),
        ("shapes", [[2, 3]], "stored.shapes"),
    ],
)
def test_spec_3_9_bad_column(tmp_path: Path, field: str, value: Any, names: str) -> None:
    rejects(_stored_edit(field, value).write(tmp_path), names)


@pytest.mark.parametrize(
    "digests",
    [lambda s: s[:-1], lambda s: s + "0", lambda s: s.upper(), lambda s: [s[:16], s[16:]]],
    ids=["short", "long", "upper", "list"],
)
def test_spec_3_9_xxh3_is_one_hex_string(tmp_path: Path, digests: Any) -> None:
    doc = sample()
    doc.manifest["stored"]["xxh3"] = digests(doc.manifest["stored"]["xxh3"])
    rejects(doc.write(tmp_path), "stored.xxh3")


def test_spec_3_9_extra_or_missing_column(tmp_path: Path) -> None:
    doc = sample()
    doc.manifest["stored"]["offsets"] = [0, 24, 30]
    rejects(doc.write(tmp_path), "stored", "version 2")
    doc = sample()
    del doc.manifest["stored"]["xxh3"]
    rejects(doc.write(tmp_path), "stored", "version 2")


def test_spec_3_9_v1_records_in_a_version_2_manifest(tmp_path: Path) -> None:
    doc = sample()
    doc.manifest["stored"] = {"w": {"dtype": "float32", "shape": [2, 3], "xxh3": "0" * 16}}
    rejects(doc.write(tmp_path), "stored", "version 2")


def test_spec_3_9_checksum_column_is_verified(tmp_path: Path) -> None:
    doc = sample()
    sums = doc.manifest["stored"]["xxh3"]
    doc.manifest["stored"]["xxh3"] = sums[:16] + ("0" * 16 if sums[16:] != "0" * 16 else "1" * 16)
    path = doc.write(tmp_path)
    with pytest.raises(satchel.IntegrityError, match="'n'"):
        satchel.load(path)
    with satchel.open(path) as ck:
        np.testing.assert_array_equal(ck["w"], W)  # only the touched tensor is checked
        with pytest.raises(satchel.IntegrityError, match="'n'"):
            ck["n"]


def test_spec_3_9_columns_must_agree_with_header(tmp_path: Path) -> None:
    doc = sample()
    doc.manifest["stored"]["shapes"] = [[3, 2], [3]]  # same bytes, other shape: SPEC 3.4
    rejects(doc.write(tmp_path), "'w'")
    doc = sample()
    doc.manifest["stored"]["names"] = ["w", "m"]
    rejects(doc.write(tmp_path), "manifest")


# -- 3.10: leaf columns -----------------------------------------------------------------------


def _leaves_edit(field: str, value: Any) -> Doc:
    doc = sample()
    doc.manifest["leaves"][field] = value
    return doc


@pytest.mark.parametrize(
    ("field", "value", "names"),
    [
        ("data", [0, 2], "leaves.data"),
        ("data", [0, -1], "leaves.data"),
        ("data", [0, "n"], "leaves.data"),
        ("framework", ["numpy", "jax"], "leaves.framework"),
        ("framework", ["numpy"], "leaves.framework"),
        ("kind", ["tensor", "module"], "leaves.kind"),
        ("requires_grad", [1, 0], "leaves.requires_grad"),
        ("requires_grad", [0, 0], "leaves.requires_grad"),
        ("requires_grad", [2], "leaves.requires_grad"),
        ("requires_grad", [1], "requires_grad on a int16"),
        ("kind", ["scalar", "tensor"], "scalar leaf"),
        ("kind", ["tensor", "bytes"], "bytes leaf"),
        ("views", [[1, "int16", [1], 0, [1]], [0, "float32", [1], 0, [1]]], "leaves.views[1]"),
        ("views", [[0, "float32", [7], 0, [1]]], "leaves.views[0]"),
        ("views", [[0, "float32", [2], 2, [1]]], "leaves.views[0].offset"),
        ("views", [[0, "float32", [2], 0, [1, 1]]], "leaves.views[0].strides"),
        ("views", [[0, "float32", [2]]], "leaves.views[0]"),
        ("views", [[5, "float32", [2], 0, [1]]], "leaves.views[0]"),
    ],
)
def test_spec_3_10_bad_leaf_column(tmp_path: Path, field: str, value: Any, names: str) -> None:
    rejects(_leaves_edit(field, value).write(tmp_path), names)


def test_spec_3_10_view_leaf(tmp_path: Path) -> None:
    # Leaf 2 views stored tensor 0 (W, 2x3 float32) as its transpose; leaf 0 stays whole.
    doc = sample()
    doc.manifest["root"]["$dict"].append(["wt", {"$t": 2}])
    cols = doc.manifest["leaves"]
    cols["data"].append(0)
    cols["framework"].append("numpy")
    cols["kind"].append("tensor")
    cols["views"] = [[2, "float32", [3, 2], 0, [1, 3]]]
    out = satchel.load(doc.write(tmp_path))
    np.testing.assert_array_equal(out["wt"], W.T)
    assert np.shares_memory(out["wt"], out["w"])


def test_spec_3_10_requires_grad_and_parameters(tmp_path: Path) -> None:
    doc = sample()
    doc.manifest["leaves"]["framework"] = ["torch", "torch"]
    doc.manifest["leaves"]["kind"] = ["parameter", "tensor"]
    doc.manifest["leaves"]["requires_grad"] = [0]
    out = satchel.load(doc.write(tmp_path))
    assert isinstance(out["w"], torch.nn.Parameter) and out["w"].requires_grad
    assert type(out["n"]) is torch.Tensor and not out["n"].requires_grad


def test_spec_3_10_extra_leaf_column(tmp_path: Path) -> None:
    rejects(_leaves_edit("offset", [0, 0]).write(tmp_path), "leaves", "version 2")


# -- 3.11: the header is the manifest's rendering ---------------------------------------------


def test_spec_3_11_writer_header_is_the_rendering(tmp_path: Path) -> None:
    path = tmp_path / "m.satchel"
    satchel.save({"b": np.arange(3, dtype=np.int16), "a": np.ones(2), "é": np.zeros(1)}, path)
    satchel.save(many(), tmp_path / "big.satchel")
    for p in (path, tmp_path / "big.satchel"):
        text, header = read_header(p)
        m = json.loads(header["__metadata__"]["satchel"])
        names = m["stored"]["names"] if m["version"] == 2 else list(m["stored"])
        entries, pos = {}, 0
        for name in names:
            e = header[name]
            n = e["data_offsets"][1] - e["data_offsets"][0]
            entries[name] = {
                "dtype": e["dtype"],
                "shape": e["shape"],
                "data_offsets": [pos, pos + n],
            }
            pos += n
        expected = json.dumps(
            {"__metadata__": header["__metadata__"], **entries},
            separators=(",", ":"),
            ensure_ascii=True,
        )
        assert text.rstrip(b" ").decode("ascii") == expected


def test_spec_3_11_reader_checks_any_other_header(tmp_path: Path) -> None:
    # Valid but not satchel's rendering (entries reordered, spaces after separators): read
    # entry by entry, with the same result.
    doc = sample()
    meta = {"epoch": "3", "satchel": compact(doc.manifest), "satchel.xxh3": ""}
    meta["satchel.xxh3"] = xxh3(meta["satchel"])
    header = {"n": doc.entries["n"], "__metadata__": meta, "w": doc.entries["w"]}
    path = tmp_path / "other.satchel"
    path.write_bytes(pack(json.dumps(header), doc.data))
    out = satchel.load(path)
    np.testing.assert_array_equal(out["w"], W)
    np.testing.assert_array_equal(out["n"], N)


@pytest.mark.parametrize(
    "change",
    ["hole", "dtype", "shape", "extra-entry", "trailing-bytes", "duplicate-entry"],
)
def test_spec_3_11_broken_header_after_the_metadata(tmp_path: Path, change: str) -> None:
    # The manifest is intact and first, as satchel writes it; the entries after it are not
    # what it renders to, so the reader checks them one by one and finds the fault.
    doc = sample()
    text = doc.header()
    data = doc.data
    w = compact(doc.entries["w"])
    if change == "hole":
        text = text.replace('"data_offsets":[24,30]', '"data_offsets":[26,32]')
        data += b"\0\0"
    elif change == "dtype":
        text = text.replace(w, w.replace("F32", "I32"))
    elif change == "shape":
        text = text.replace(w, w.replace("[2,3]", "[3,2]"))
    elif change == "extra-entry":
        text = text[:-1] + ',"x":{"dtype":"U8","shape":[0],"data_offsets":[30,30]}}'
    elif change == "trailing-bytes":
        data += b"\0" * 8
    else:
        text = text[:-1] + ',"w":' + w + "}"
    path = tmp_path / "bad.satchel"
    path.write_bytes(pack(text, data))
    with pytest.raises(satchel.FormatError):
        satchel.load(path)
    with pytest.raises(satchel.FormatError):
        satchel.open(path)


def test_spec_1_5_duplicate_key_in_compact_manifest(tmp_path: Path) -> None:
    doc = sample()
    text = compact(doc.manifest).replace('{"$t":0}', '{"$t":0,"$t":0}', 1)
    rejects(doc.write(tmp_path, text=text), "twice")


def test_compact_manifest_duplicate_keys_in_metadata(tmp_path: Path) -> None:
    doc = sample()
    text = doc.header().replace('"epoch":"3"', '"epoch":"3","epoch":"3"', 1)
    path = tmp_path / "dup.satchel"
    path.write_bytes(pack(text, doc.data))
    rejects(path, "twice")


def test_many_tensors_roundtrip_torch_and_numpy(tmp_path: Path) -> None:
    state = many(3000)
    path = tmp_path / "s.satchel"
    satchel.save(state, path)
    back = satchel.load(path)
    assert list(back) == list(state)
    assert all(type(v) is torch.Tensor and torch.equal(v, state[k]) for k, v in back.items())
    # Each tensor owns its storage, so the result saves again as separate tensors (no spans).
    satchel.save(back, tmp_path / "again.satchel")
    assert (tmp_path / "again.satchel").read_bytes() == path.read_bytes()
    safetensors.torch.save_file(back, tmp_path / "st.safetensors")  # refuses shared storage
    arrays = satchel.load(path, framework="numpy")
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    with satchel.open(path) as ck:
        assert len(ck) == 3000 and ck.info("layer.5.w").shape == (4,)
        assert torch.equal(ck["layer.2999.w"], state["layer.2999.w"])


# -- the writer of large files: data first, hashed alongside, header last (issue 12) ----------


def _big_state() -> dict[str, np.ndarray]:
    # Above the 64 MiB from which the writer overlaps hashing with writing.
    rng = np.random.default_rng(7)
    return {
        "a": rng.standard_normal(9 << 20, dtype=np.float32),  # 36 MiB
        "b": rng.integers(0, 2**15, 15 << 20, dtype=np.int16),  # 30 MiB
        "c": np.arange(5, dtype=np.uint8),
    }


def test_large_file_header_written_last_is_the_same_file(tmp_path: Path) -> None:
    state = _big_state()
    path = tmp_path / "big.satchel"
    seen: list[tuple[int, int]] = []
    satchel.save(state, path, progress=lambda done, total: seen.append((done, total)))
    size = path.stat().st_size
    assert seen and seen[-1] == (size, size)
    assert all(a <= b for (a, _), (b, _) in itertools.pairwise(seen))
    text, header = read_header(path)
    m = json.loads(header["__metadata__"]["satchel"])
    raw = path.read_bytes()
    start = 8 + len(text)
    for name, rec in m["stored"].items():
        a, b = header[name]["data_offsets"]
        assert rec["xxh3"] == xxh3(raw[start + a : start + b])
    back = satchel.load(path)
    for k, v in state.items():
        np.testing.assert_array_equal(back[k], v)
    flat = safetensors.numpy.load_file(path)
    np.testing.assert_array_equal(flat["b"], state["b"])


def test_large_file_write_failure_keeps_the_previous_file(tmp_path: Path) -> None:
    # A real write error mid-data: the file size limit (RLIMIT_FSIZE) stops the write at 40 MiB
    # with EFBIG while the hashing thread runs; the old file stays and no temp file is left.
    path = tmp_path / "big.satchel"
    satchel.save({"old": np.arange(3)}, path)
    before = path.read_bytes()
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        import numpy as np, satchel
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_compact import _big_state
        state = _big_state()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40 << 20, 40 << 20))
        try:
            satchel.save(state, {str(path)!r})
        except satchel.SatchelOSError as e:
            print("refused:", type(e).__name__, e)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and str(path) in out.stdout, out.stdout
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.satchel"]
