"""One read pipeline (issue: consolidation): every reader produces a tree of array references
over storages, one module materialises them, and ``satchel.open`` returns one class."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import satchel
from satchel._io import reader as reader_mod
from satchel._read.open import open_path
from satchel._read.refs import ArrayRef, Deferred
from satchel._tree import MAX_DEPTH, iter_leaves


def _satchel(p: Path) -> None:
    satchel.save({"a": np.arange(4, dtype=np.float32), "b": [np.ones(2), 7]}, p)


def _safetensors(p: Path) -> None:
    save_file({"a": np.arange(4, dtype=np.float32), "b": np.ones(2)}, str(p))


def _torch(p: Path) -> None:
    torch.save({"a": torch.arange(4.0), "b": [torch.ones(2), 7]}, p)


def _npz(p: Path) -> None:
    with p.open("wb") as f:
        np.savez(f, a=np.arange(4, dtype=np.float32), b=np.ones(2))


def _npy(p: Path) -> None:
    with p.open("wb") as f:
        np.save(f, np.arange(4, dtype=np.float32))


WRITERS: dict[str, Callable[[Path], None]] = {
    "satchel": _satchel,
    "safetensors": _safetensors,
    "torch": _torch,
    "npz": _npz,
    "numpy": _npy,
}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_open_returns_one_class_for_every_format(tmp_path: Path, fmt: str) -> None:
    p = tmp_path / f"f.{fmt}"
    WRITERS[fmt](p)
    with satchel.open(p) as ck:
        assert type(ck) is satchel.ArrayFile
        assert ck.format == fmt
        names = ck.keys()
        assert names
        for name in names:
            info = ck.info(name)
            arr = ck[name]
            assert tuple(np.asarray(arr).shape) == info.shape
        assert isinstance(ck.structure, dict | np.ndarray | satchel.TensorInfo)
        assert isinstance(ck.metadata, dict)
        loaded = ck.load()
    assert loaded is not None
    with pytest.raises(satchel.SatchelError, match="closed"):
        ck[names[0]]


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_every_reader_produces_refs_over_storages(tmp_path: Path, fmt: str) -> None:
    p = tmp_path / f"f.{fmt}"
    WRITERS[fmt](p)
    f = open_path(p)
    leaves = [x for _, x in iter_leaves(f._tree.root, where=str(p))]
    arrays = [x.resolve() if isinstance(x, Deferred) else x for x in leaves]
    refs = [x for x in arrays if isinstance(x, ArrayRef)]
    assert refs, "no array came back as a reference"
    for ref in refs:
        assert ref.offset + ref.nbytes <= ref.storage.nbytes
    assert {id(s) for s in f.storages()} == {id(r.storage) for r in refs}


def test_load_and_open_agree_for_every_format(tmp_path: Path) -> None:
    for fmt, write in WRITERS.items():
        p = tmp_path / f"g.{fmt}"
        write(p)
        whole = satchel.load(p, framework="numpy")
        with satchel.open(p, framework="numpy") as ck:
            lazy = {name: ck[name] for name in ck}
        flat = {".".join(path) or "tensor": x for path, x in iter_leaves(whole, where=fmt)}
        for name, arr in lazy.items():
            np.testing.assert_array_equal(arr, flat[name], err_msg=f"{fmt}:{name}")


def test_verify_on_first_touch_names_only_the_damaged_tensor(tmp_path: Path) -> None:
    p = tmp_path / "two.satchel"
    satchel.save({"good": np.zeros(64, np.float32), "bad": np.ones(64, np.float32)}, p)
    raw = bytearray(p.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    hdr = raw[8 : 8 + n].decode()
    bad_start = 8 + n + _data_start(hdr, "bad")
    raw[bad_start + 3] ^= 0x01
    p.write_bytes(bytes(raw))
    with satchel.open(p) as ck:
        np.testing.assert_array_equal(ck["good"], np.zeros(64, np.float32))
        with pytest.raises(satchel.IntegrityError) as e:
            ck["bad"]
        assert e.value.field == "bad" and e.value.path == str(p)
        with pytest.raises(satchel.IntegrityError):
            ck["bad"]  # a failed check keeps failing
    with pytest.raises(satchel.IntegrityError):
        satchel.load(p)
    assert satchel.load(p, verify=False)["good"].sum() == 0


def _data_start(header_json: str, name: str) -> int:
    import json

    return int(json.loads(header_json)[name]["data_offsets"][0])


def test_format_errors_carry_path_and_field(tmp_path: Path) -> None:
    p = tmp_path / "short.safetensors"
    p.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(satchel.FormatError) as e:
        satchel.load(p)
    assert e.value.path == str(p)


def test_torch_sharing_survives_the_one_materializer(tmp_path: Path) -> None:
    w = torch.arange(12.0).reshape(3, 4)
    p = tmp_path / "tied.pt"
    torch.save({"w": w, "t": w, "v": w[1:]}, p)
    q = tmp_path / "tied.satchel"
    satchel.save({"w": w, "t": w, "v": w[1:]}, q)
    for path in (p, q):
        out = satchel.load(path, framework="torch")
        assert out["t"] is out["w"]
        assert out["v"].untyped_storage().data_ptr() == out["w"].untyped_storage().data_ptr()
        out["w"][1, 0] = 100.0
        assert out["v"][0, 0] == 100.0


def test_one_depth_cap_for_every_reader(tmp_path: Path) -> None:
    deep: Any = torch.zeros(1)
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    p = tmp_path / "deep.pt"
    torch.save(deep, p)
    with pytest.raises(satchel.FormatError, match=f"deeper than {MAX_DEPTH}"):
        satchel.load(p)


def _count_header_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = reader_mod.read_header  # the one entry: header and manifest, fast path or not

    def counting(raw: bytes, **kw: Any) -> Any:
        calls.append(kw.get("where", ""))
        return real(raw, **kw)

    monkeypatch.setattr(reader_mod, "read_header", counting)
    return calls


@pytest.mark.parametrize(
    "command",
    [
        ["inspect"],
        ["verify"],
        ["convert", "{out}"],
        ["diff", "{path}"],
    ],
)
def test_no_command_parses_a_file_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    from satchel._cli import main

    p = tmp_path / "m.satchel"
    satchel.save({"w": np.ones((2, 2), np.float32)}, p)
    calls = _count_header_parses(monkeypatch)
    argv = [command[0], str(p)] + [a.format(out=tmp_path / "o.npz", path=p) for a in command[1:]]
    main(argv, stdout=io.StringIO(), stderr=io.StringIO())
    files = 2 if command[0] == "diff" else 1
    assert len(calls) == files, calls


def test_api_calls_parse_a_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "m.satchel"
    satchel.save({"weight": torch.ones(2, 2)}, p)
    calls = _count_header_parses(monkeypatch)
    satchel.load(p)
    satchel.verify(p)
    satchel.convert(p, tmp_path / "o.npz", to="npz")
    satchel.load_state(torch.nn.Linear(2, 2, bias=False), p)
    assert len(calls) == 4, calls


def test_load_opens_a_satchel_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Detection asks first whether a file is shaped like safetensors; for a satchel file the
    # one open and first read that answer it also give the header (reader.open_native).
    p = tmp_path / "m.satchel"
    satchel.save({"weight": torch.ones(2, 2)}, p)
    opened: list[str] = []
    real_open = os.open

    def counting(path: Any, *args: Any, **kw: Any) -> int:
        opened.append(str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", counting)
    out = satchel.load(p)
    assert torch.equal(out["weight"], torch.ones(2, 2))
    assert opened.count(str(p)) == 1, opened
    # A file of another format still goes to detection, which names it.
    q = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2)}, q)
    np.testing.assert_array_equal(np.asarray(satchel.load(q)["w"]), np.ones(2))
    bad = tmp_path / "junk.bin"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(satchel.FormatError, match=r"not recognised|PNG"):
        satchel.load(bad)


def test_zip_member_crc_of_torch_files_is_checked(tmp_path: Path) -> None:
    # A flipped bit in a tensor's bytes inside a PyTorch zip: torch.load returns changed values;
    # satchel checks each member's CRC-32 when verifying.
    p = tmp_path / "m.pt"
    torch.save({"w": torch.arange(256.0)}, p)
    with zipfile.ZipFile(p) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename)
    raw = bytearray(p.read_bytes())
    at = info.header_offset
    name_len = int.from_bytes(raw[at + 26 : at + 28], "little")
    extra_len = int.from_bytes(raw[at + 28 : at + 30], "little")
    raw[at + 30 + name_len + extra_len + 8] ^= 1  # a bit of the stored float32 data
    p.write_bytes(bytes(raw))
    with pytest.raises(satchel.IntegrityError) as e:
        satchel.load(p)
    assert "data/" in str(e.value)
    assert satchel.load(p, verify=False)["w"].shape == (256,)


def test_a_fifo_is_refused_never_waited_on(tmp_path: Path) -> None:
    import subprocess
    import sys

    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    code = (
        "import sys, satchel\n"
        "for f in (satchel.load, satchel.open, satchel.detect):\n"
        "    try:\n"
        "        f(sys.argv[1])\n"
        "    except satchel.FormatError as e:\n"
        "        assert 'not a regular file' in str(e), e\n"
        "r = satchel.verify(sys.argv[1])\n"
        "assert r.status == 'unreadable', r\n"
        "print('refused')\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(fifo)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout.strip() == "refused", r.stderr
