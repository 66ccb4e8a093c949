"""Object storage through fsspec's in-memory store (SPEC 11): the fast half of the tests.

``memory://`` is a real fsspec filesystem; :class:`CountingMemory` is that filesystem with its
ranged read counted (registered as ``countmem://``), so the tests can assert what was read.
The S3 half, against a real S3 API on loopback, is tests/test_remote_s3.py.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import uuid
from typing import Any, ClassVar

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

import satchel
from satchel._remote import ranged, reader


class CountingMemory(MemoryFileSystem):
    """fsspec's memory store, recording every ranged read as (path, start, end)."""

    protocol = ("countmem",)
    reads: ClassVar[list[tuple[str, int | None, int | None]]] = []
    options: ClassVar[list[dict[str, Any]]] = []  # what each instance was made with

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        CountingMemory.options.append(dict(kwargs))

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kw: Any):  # type: ignore[override]
        CountingMemory.reads.append((path, start, end))
        return super().cat_file(path, start=start, end=end, **kw)


fsspec.register_implementation("countmem", CountingMemory, clobber=True)


@pytest.fixture
def url() -> str:
    return f"memory://satchel-tests/{uuid.uuid4().hex}"


def _state(n: int = 3) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "layers": [{"w": rng.standard_normal((64, 32)).astype(np.float32)} for _ in range(n)],
        "step": 7,
        "name": "run",
    }


def _bytes_at(u: str) -> bytes:
    fs, path = fsspec.core.url_to_fs(u)
    return bytes(fs.cat_file(path))


def test_spec_11_1_urls_everywhere_same_bytes_as_local(url: str, tmp_path: Any) -> None:
    state = _state()
    satchel.save(state, f"{url}/a.satchel")
    satchel.save(state, tmp_path / "a.satchel")
    assert _bytes_at(f"{url}/a.satchel") == (tmp_path / "a.satchel").read_bytes()
    back = satchel.load(f"{url}/a.satchel")
    assert back["step"] == 7 and back["name"] == "run"
    np.testing.assert_array_equal(back["layers"][2]["w"], state["layers"][2]["w"])
    with satchel.open(f"{url}/a.satchel") as ck:
        assert ck.keys() == ["layers.0.w", "layers.1.w", "layers.2.w"]
        assert ck.info("layers.1.w").shape == (64, 32)
        np.testing.assert_array_equal(ck["layers.1.w"], state["layers"][1]["w"])
    assert satchel.verify(f"{url}/a.satchel").ok
    # convert: URL -> local, local -> URL, URL -> URL
    satchel.convert(f"{url}/a.satchel", tmp_path / "b.satchel")
    assert (tmp_path / "b.satchel").read_bytes() == (tmp_path / "a.satchel").read_bytes()
    satchel.convert(tmp_path / "b.satchel", f"{url}/c.satchel")
    satchel.convert(f"{url}/c.satchel", f"{url}/d.satchel")
    assert _bytes_at(f"{url}/d.satchel") == (tmp_path / "a.satchel").read_bytes()
    # load_state into a mapping of arrays, in place
    flat = {f"w{i}": layer["w"] for i, layer in enumerate(state["layers"])}
    satchel.save(flat, f"{url}/flat.satchel")
    target = {f"w{i}": np.zeros((64, 32), np.float32) for i in range(3)}
    report = satchel.load_state(target, f"{url}/flat.satchel")
    assert report.clean and len(report.loaded) == 3
    np.testing.assert_array_equal(target["w2"], state["layers"][2]["w"])


def test_spec_11_1_storage_options_reach_fsspec_and_not_local_paths(
    url: str, tmp_path: Any
) -> None:
    u = "countmem://" + url.removeprefix("memory://") + "/x"
    token = uuid.uuid4().hex  # a fresh instance (fsspec caches them by their options)
    satchel.save({"x": np.zeros(2)}, u, storage_options={"marker": token})
    assert CountingMemory.options[-1] == {"marker": token}
    satchel.load(u, storage_options={"marker": token + "-load"})
    assert CountingMemory.options[-1] == {"marker": token + "-load"}
    with pytest.raises(satchel.UsageError, match="storage_options apply to URLs"):
        satchel.save({"x": np.zeros(2)}, tmp_path / "x", storage_options={"anon": True})
    with pytest.raises(satchel.UsageError, match="storage_options apply to URLs"):
        satchel.load(tmp_path / "x", storage_options={"anon": True})


def test_spec_11_5_sharded_folder_url_index_is_the_commit(url: str, tmp_path: Any) -> None:
    state = _state(6)
    folder = f"{url}/sharded"
    satchel.save(state, folder, max_shard_size=10_000)
    fs, root = fsspec.core.url_to_fs(folder)
    names = sorted(p.rpartition("/")[2] for p in fs.ls(root, detail=False))
    assert names[-1] == "model.safetensors.index.json" and len(names) == 7
    # the same shards and index a local sharded save writes
    satchel.save(state, tmp_path / "local", max_shard_size=10_000)
    for name in names:
        assert _bytes_at(f"{folder}/{name}") == (tmp_path / "local" / name).read_bytes(), name
    back = satchel.load(folder)
    np.testing.assert_array_equal(back["layers"][5]["w"], state["layers"][5]["w"])
    with satchel.open(f"{folder}/model.safetensors.index.json") as ck:
        assert len(ck) == 6 and ck.format == "sharded"
    # a second save with fewer shards: new names, new index, old shards removed
    smaller = _state(2)
    satchel.save(smaller, folder, max_shard_size=10_000)
    after = sorted(p.rpartition("/")[2] for p in fs.ls(root, detail=False))
    assert len(after) == 3 and "model.safetensors.index.json" in after
    assert len(satchel.load(folder)["layers"]) == 2


def test_spec_11_2_open_reads_header_once_and_only_the_touched_tensor(url: str) -> None:
    state = {f"t{i}": np.full(100_000, i, dtype=np.float32) for i in range(8)}  # 400 kB each
    u = "countmem://" + url.removeprefix("memory://") + "/lazy.satchel"
    satchel.save(state, u)
    size = len(_bytes_at(u))
    CountingMemory.reads.clear()
    with satchel.open(u) as ck:
        header_reads = list(CountingMemory.reads)
        assert len(header_reads) == 1 and header_reads[0][1] == 0  # one ranged read, from 0
        CountingMemory.reads.clear()
        np.testing.assert_array_equal(ck["t5"], state["t5"])
        (read,) = CountingMemory.reads  # one ranged read of exactly that tensor's bytes
        _, start, end = read
        assert start is not None and end is not None and end - start == 400_000
    assert all(s is not None and e is not None for _, s, e in header_reads)
    assert header_reads[0][2] == min(size, reader.FIRST_RANGE)


def test_spec_11_2_long_header_takes_a_second_read_and_big_tensors_go_in_parts(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small ranges on purpose, so a small file shows both behaviours.
    monkeypatch.setattr(reader, "FIRST_RANGE", 256)
    monkeypatch.setattr(ranged, "READ_PART", 10_000)
    state = {f"name-{i:04d}": np.arange(i + 1, dtype=np.int64) for i in range(40)}
    state["big"] = np.arange(12_000, dtype=np.float64)  # 96,000 bytes: 10 parts
    u = "countmem://" + url.removeprefix("memory://") + "/parts.satchel"
    satchel.save(state, u)
    CountingMemory.reads.clear()
    with satchel.open(u) as ck:
        assert [(s, e) for _, s, e in CountingMemory.reads][:1] == [(0, 256)]
        assert len(CountingMemory.reads) == 2  # the rest of the header, in one more read
        CountingMemory.reads.clear()
        np.testing.assert_array_equal(ck["big"], state["big"])
        spans = sorted((s, e) for _, s, e in CountingMemory.reads)
    assert len(spans) == 10 and all(e - s <= 10_000 for s, e in spans)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # contiguous
    assert spans[-1][1] - spans[0][0] == 96_000


def test_spec_11_3_object_changed_after_save_raises_integrity_error(url: str) -> None:
    state = _state()
    u = f"{url}/changed.satchel"
    satchel.save(state, u)
    fs, path = fsspec.core.url_to_fs(u)
    raw = bytearray(fs.cat_file(path))
    raw[-5] ^= 0xFF  # the last stored tensor, layers.2.w
    fs.pipe_file(path, bytes(raw))
    with satchel.open(u) as ck:
        np.testing.assert_array_equal(ck["layers.0.w"], state["layers"][0]["w"])
        with pytest.raises(satchel.IntegrityError) as e:
            ck["layers.2.w"]
    assert e.value.path == u and "layers.2.w" in str(e.value)
    with pytest.raises(satchel.IntegrityError):
        satchel.load(u)
    report = satchel.verify(u)
    assert report.status == "corrupt" and len(report.problems) == 1
    assert satchel.load(u, verify=False)["step"] == 7
    # shorter than its header says: the object was replaced after it was opened
    with satchel.open(u, verify=False) as ck:
        fs.pipe_file(path, bytes(raw[:-100]))
        with pytest.raises(satchel.FormatError, match="object changed"):
            ck["layers.2.w"]


def test_spec_11_4_failed_save_to_a_url_leaves_the_old_object(url: str) -> None:
    u = f"{url}/keep.satchel"
    satchel.save({"x": np.arange(3)}, u)
    before = _bytes_at(u)
    with pytest.raises(satchel.UnsupportedObjectError):
        satchel.save({"x": object()}, u)  # refused before a byte is written
    assert _bytes_at(u) == before
    with pytest.raises(satchel.UsageError, match="sharded save writes a folder"):
        satchel.save({"x": np.arange(3)}, u, max_shard_size=10)
    assert _bytes_at(u) == before


def test_spec_11_4_large_save_on_a_store_without_multipart_goes_through_a_temp_name(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from satchel._remote import upload

    monkeypatch.setattr(upload, "_SMALL", 1000)  # take the large-object path on a small file
    u = f"{url}/big.satchel"
    satchel.save({"x": np.arange(1000)}, u)
    fs, path = fsspec.core.url_to_fs(u)

    class Boom(Exception):
        pass

    def chunks() -> Any:
        yield b"partial bytes"
        raise Boom

    before = _bytes_at(u)
    store = satchel._remote.store.open_store(u)
    with pytest.raises(Boom):
        upload.upload(store, u, chunks(), 10_000)
    assert _bytes_at(u) == before
    folder = path.rpartition("/")[0]
    assert sorted(p.rpartition("/")[2] for p in fs.ls(folder, detail=False)) == ["big.satchel"]
    np.testing.assert_array_equal(satchel.load(u)["x"], np.arange(1000))


def test_spec_11_6_missing_objects_and_unknown_protocols_are_satchel_errors(url: str) -> None:
    with pytest.raises(satchel.SatchelFileNotFoundError, match=url):
        satchel.load(f"{url}/nothing")
    with pytest.raises(satchel.SatchelFileNotFoundError):
        satchel.open(f"{url}/nothing/")
    with pytest.raises(satchel.SatchelOSError, match="nosuchproto"):
        satchel.load("nosuchproto://bucket/key")
    u = f"{url}/not-satchel.pt"
    fs, path = fsspec.core.url_to_fs(u)
    fs.pipe_file(path, b"PK\x03\x04 a zip, not a safetensors file")
    with pytest.raises(satchel.FormatError, match="copy other formats to a local file"):
        satchel.load(u)


def test_spec_11_7_import_satchel_imports_no_fsspec_or_s3fs() -> None:
    code = (
        "import sys, satchel, numpy as np; satchel.save({'x': np.zeros(2)}, sys.argv[1]);"
        "satchel.load(sys.argv[1]);"
        "bad = [m for m in ('fsspec', 's3fs', 'botocore', 'aiobotocore') if m in sys.modules];"
        "assert not bad, bad"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-c", code, f"{d}/x"], check=True, timeout=120)


def test_remote_paths_are_urls_only_when_they_say_so() -> None:
    from pathlib import Path

    from satchel._remote.url import is_url

    assert is_url("s3://b/k") and is_url("memory://x") and is_url("gs://b/k")
    assert not is_url("C:\\models\\x") and not is_url("a:b") and not is_url("models/x")
    assert not is_url(Path("s3://b/k"))  # a Path is a local path, whatever it spells


def test_spec_11_9_manager_on_memory_url_saves_restores_and_retains(
    url: str, tmp_path: Any
) -> None:
    root = f"{url}/run"
    mgr = satchel.CheckpointManager(root, keep_last=2)
    for step in range(4):
        mgr.save(step, model={"w": np.full(4, float(step))}, extra={"epoch": step})
    assert mgr.steps() == [2, 3] and mgr.latest() == 3
    fs, path = fsspec.core.url_to_fs(root)
    names = sorted(p.removeprefix(path).lstrip("/") for p in fs.find(path))
    assert names == [
        f"step_0000000{s}/{n}"
        for s in (2, 3)
        for n in ("extra.satchel", "manifest.json", "model.satchel")
    ]
    target = {"w": np.zeros(4)}
    restored = mgr.restore(model=target)
    assert restored.step == 3 and restored.extra == {"epoch": 3}
    assert target["w"].tolist() == [3.0] * 4
    assert mgr.kept_by() == {2: ["keep_last=2"], 3: ["keep_last=2", "newest"]}
    assert [i.valid for i in mgr.checkpoints()] == [True, True]
    with pytest.raises(satchel.CheckpointNotFoundError):
        mgr.restore(1)
    with pytest.raises(satchel.UsageError, match="incremental"):
        satchel.CheckpointManager(f"{url}/other", incremental="yes")
    with pytest.raises(satchel.UsageError, match="URL roots"):
        satchel.CheckpointManager(tmp_path / "local", storage_options={"anon": True})


def test_spec_11_4_file_urls_go_through_a_temporary_name(tmp_path: Any) -> None:
    target = tmp_path / "m.satchel"
    u = f"file://{target}"
    satchel.save({"x": np.arange(5)}, u)
    assert satchel.load(target)["x"].tolist() == list(range(5))  # the same file, locally
    satchel.save({"x": np.arange(7)}, u)
    assert satchel.load(u)["x"].tolist() == list(range(7))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.satchel"]  # no temp left


def test_folder_urls_resolve_like_hugging_face_folders(url: str) -> None:
    satchel.save({"w": np.arange(3)}, f"{url}/single/model.safetensors")
    assert satchel.load(f"{url}/single")["w"].tolist() == [0, 1, 2]  # the lone file
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{path}/two/a.safetensors.index.json", b'{"weight_map": {"x": "a.bin"}}')
    fs.pipe_file(f"{path}/two/b.safetensors.index.json", b'{"weight_map": {"x": "b.bin"}}')
    with pytest.raises(satchel.FormatError, match="several shard indexes"):
        satchel.load(f"{url}/two")
    fs.pipe_file(f"{path}/bins/model.safetensors.index.json", b'{"weight_map": {"x": "x.bin"}}')
    with pytest.raises(satchel.FormatError, match=r"names \.bin shards"):
        satchel.load(f"{url}/bins")
    fs.pipe_file(f"{path}/other/notes.txt", b"hello")
    with pytest.raises(satchel.FormatError, match="a folder without"):
        satchel.load(f"{url}/other")
    # an index naming a shard that is not there
    satchel.save({"a": np.zeros(3), "b": np.ones(3)}, f"{url}/gone", max_shard_size=10)
    shards = sorted(p for p in fs.ls(f"{path}/gone", detail=False) if p.endswith("safetensors"))
    fs.rm_file(shards[0])
    with pytest.raises(satchel.FormatError, match="does not exist"):
        satchel.open(f"{url}/gone")
