"""Incremental and distributed checkpoints in object storage (SPEC 11.13-11.15), against a real
S3 API on loopback (moto's server, one for the session) and ``memory://``; the distributed
ones run two real gloo ranks (tests/remote_dist_worker.py) that reach the server over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import torch

import s3server
import satchel
from satchel._checkpoint.remote_pool import read_record
from satchel._remote.reader import open_object

WORKER = Path(__file__).with_name("remote_dist_worker.py")
sys.path.insert(0, str(WORKER.parent))  # the worker module holds the expected states

import remote_dist_worker as worker  # noqa: E402

KiB = 1 << 10


@pytest.fixture(scope="module")
def server() -> Iterator[s3server.Server]:
    srv = s3server.Server().start()
    yield srv
    srv.stop()


def _bucket(server: s3server.Server) -> str:
    name = f"b{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", **server.options()).mkdir(name)
    return name


def _names(fs: Any, url: str) -> set[str]:
    _, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    try:
        return {p.rpartition("/")[2] for p in fs.ls(path, detail=False)}
    except FileNotFoundError:
        return set()


def _referenced(mgr: Any, root: str) -> set[str]:
    store = mgr._store
    return {
        f.file
        for step in mgr.steps()
        for f in read_record(store, f"{root}/step_{step:08d}", step).pool
    }


def _frozen(step: int) -> dict[str, np.ndarray]:
    """A fine-tuning state: a frozen 2 MiB backbone and a small adapter that changes."""
    rng = np.random.default_rng(0)
    return {
        "backbone": rng.standard_normal(512 * 1024).astype(np.float32),
        "adapter": np.arange(256, dtype=np.float32) + step,
    }


def _bitwise(got: Any, want: dict[str, np.ndarray]) -> None:
    for k, v in want.items():
        g = np.asarray(got[k])
        assert g.dtype == v.dtype and g.tobytes() == v.tobytes(), k


# -- incremental, one process ------------------------------------------------------------------
def test_spec_11_13_incremental_on_s3_uploads_only_what_changed_and_collects(
    server: s3server.Server,
) -> None:
    opts = server.options()
    root = f"s3count://{_bucket(server)}/run"
    mgr = satchel.CheckpointManager(root, storage_options=opts, incremental=True, keep_last=2)
    fs = fsspec.filesystem("s3count", **opts)
    state_bytes = sum(v.nbytes for v in _frozen(0).values())
    for step in range(5):
        fs.sent.clear()
        fs.calls.clear()
        mgr.save(step, model=_frozen(step), metrics={"loss": 1.0 / (step + 1)})
        sent = sum(n for _, n in fs.sent)
        assert sent > 0  # the counting store saw this save's uploads
        if step > 0:
            assert sent <= 0.05 * state_bytes, (step, sent, state_bytes)
            # The reused backbone was compared with its stored bytes: a ranged read of it.
            assert any(b - a == _frozen(0)["backbone"].nbytes for a, b in fs.gets())
        target = {k: np.zeros_like(v) for k, v in _frozen(step).items()}
        assert mgr.restore(step, model=target).step == step
        _bitwise(target, _frozen(step))
    assert mgr.steps() == [3, 4]
    assert [i.valid for i in mgr.checkpoints(verify=True)] == [True, True]
    # GC: the pool holds exactly what the two kept records list; step 0's backbone among it.
    blobs = _names(fs, f"{root}/blobs")
    assert blobs == _referenced(mgr, root)
    assert any(b.startswith("00000000-") for b in blobs)
    assert len(blobs) == 3  # the backbone's and the two kept steps' adapters
    loaded = satchel.load(f"{root}/step_00000004/model", storage_options=opts)
    _bitwise(loaded, _frozen(4))


def test_spec_11_13_reuse_needs_the_stored_bytes_equal_not_only_the_hash() -> None:
    root = f"memory://inc-{uuid.uuid4().hex[:8]}"
    mgr = satchel.CheckpointManager(root, incremental=True)
    mgr.save(0, model=_frozen(0))
    fs, _ = fsspec.core.url_to_fs(root)
    (pool_file,) = _names(fs, f"{root}/blobs")
    url = f"{root}/blobs/{pool_file}"
    obj = open_object(mgr._store, url)
    (at,) = [obj.header.data_start + e.start for e in obj.header.entries if e.name == "backbone"]
    raw = bytearray(fs.cat_file(url))
    raw[at : at + 8] = bytes(8)  # the backbone's first bytes, behind its (unchanged) xxh3
    fs.pipe_file(url, bytes(raw))
    mgr.save(1, model=_frozen(1))
    # Same length and xxh3 as the stored entry, other bytes: written anew, not referenced.
    record = read_record(mgr._store, f"{root}/step_00000001", 1)
    assert pool_file not in {f.file for f in record.pool}
    target = {k: np.zeros_like(v) for k, v in _frozen(1).items()}
    mgr.restore(1, model=target)
    _bitwise(target, _frozen(1))
    assert "changed since the commit" in (mgr.check(0) or "")


def test_spec_11_13_an_interrupted_incremental_save_is_cleaned_by_the_next() -> None:
    srv = s3server.Server().start()  # stopped mid-save: its own server
    try:
        opts = srv.options(config_kwargs={"connect_timeout": 1, "read_timeout": 2})
        bucket = _bucket(srv)
        root = f"s3faulty://{bucket}/run"
        mgr = satchel.CheckpointManager(root, storage_options=opts, incremental=True)
        mgr.save(0, model=_frozen(0))
        fs = fsspec.filesystem("s3faulty", **opts)
        fs.fail_put, fs.fault = "step_00000001/manifest.json", srv.stop  # before the commit
        with pytest.raises(satchel.SatchelOSError, match=bucket):
            mgr.save(1, model=_frozen(1))
        srv.start()  # same port, same objects
        plain = fsspec.filesystem("s3", **srv.options())
        litter = _names(plain, f"s3://{bucket}/run/blobs") - _referenced(mgr, root)
        assert litter  # the new adapter's pool object: uploaded, never committed
        assert mgr.steps() == [0] and mgr.check(0) is None
        mgr.save(2, model=_frozen(2))
        assert mgr.steps() == [0, 2]
        assert _names(plain, f"s3://{bucket}/run/blobs") == _referenced(mgr, root)
        assert not _names(plain, f"s3://{bucket}/run/step_00000001")
        for step in (0, 2):
            target = {k: np.zeros_like(v) for k, v in _frozen(step).items()}
            mgr.restore(step, model=target)
            _bitwise(target, _frozen(step))
    finally:
        srv.stop()


def test_spec_11_13_nothing_is_collected_while_a_record_does_not_parse() -> None:
    root = f"memory://inc-{uuid.uuid4().hex[:8]}"
    mgr = satchel.CheckpointManager(root, incremental=True)
    mgr.save(0, model=_frozen(0))
    mgr.save(1, model=_frozen(1))
    fs, _ = fsspec.core.url_to_fs(root)
    stray = f"{root}/blobs/00000007-0badf00d-00001.safetensors"  # no record lists it
    fs.pipe_file(stray, b"left by a killed save")
    fs.pipe_file(f"{root}/step_00000000/manifest.json", b"{not json")  # references unknown
    mgr.save(2, model=_frozen(2))
    assert fs.exists(stray)
    assert mgr.steps() == [1, 2]  # step 0 is no checkpoint, and not counted either
    fs.rm(f"{root}/step_00000000", recursive=True)
    temp = f"{root}/blobs/.00000003-00c0ffee-00001.safetensors.satchel-1-ab.tmp"
    fs.pipe_file(temp, b"a killed upload's temporary object (stores without multipart)")
    mgr.save(3, model=_frozen(3))
    assert not fs.exists(stray) and not fs.exists(temp)
    assert _names(fs, f"{root}/blobs") == _referenced(mgr, root)


def test_spec_11_13_retention_deletes_the_record_before_the_pool_objects(
    server: s3server.Server,
) -> None:
    opts = server.options()
    bucket = _bucket(server)
    root = f"s3count://{bucket}/ret"
    mgr = satchel.CheckpointManager(root, storage_options=opts, incremental=True, keep_last=1)
    mgr.save(0, model=_frozen(0))  # the backbone's pool object, referenced from here on
    mgr.save(1, model=_frozen(1))  # a pool object of step 1's adapter alone
    fs = fsspec.filesystem("s3count", **opts)
    fs.keys.clear()
    mgr.save(2, model=_frozen(2))
    deletes = [k for op, k in fs.keys if op == "delete_object"]
    puts = [k for op, k in fs.keys if op == "put_object"]
    assert puts[-1].endswith("step_00000002/manifest.json")
    first = deletes.index("ret/step_00000001/manifest.json")
    pool = [i for i, k in enumerate(deletes) if k.startswith("ret/blobs/")]
    assert pool and min(pool) > first  # step 1's adapter went after its record
    assert _names(fs, f"{root}/blobs") == _referenced(mgr, root)


# -- distributed (2 gloo ranks) ----------------------------------------------------------------
def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(server: s3server.Server) -> tuple[str, list[str]]:
    """Run the worker's job once on two ranks; every test below checks a part of it."""
    bucket = _bucket(server)
    port = _port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), server.endpoint, bucket],
            env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "MASTER_PORT": str(port)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    try:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for r, p in enumerate(procs):
        assert p.returncode == 0 and f"rank {r} ok" in outs[r], "\n".join(outs)
    return bucket, outs


def _torch_bitwise(got: Any, want: dict[str, torch.Tensor]) -> None:
    for k, v in want.items():
        g = got[k]
        assert isinstance(g, torch.Tensor) and g.dtype == v.dtype, k
        assert g.contiguous().view(torch.uint8).equal(v.contiguous().view(torch.uint8)), k


def test_spec_11_14_two_ranks_save_to_s3_and_restore_in_one_process(
    server: s3server.Server, ranks: tuple[str, list[str]]
) -> None:
    bucket, _ = ranks
    root = f"s3://{bucket}/plain"
    mgr = satchel.CheckpointManager(root, storage_options=server.options())
    assert mgr.steps() == [1, 2]
    for step in (1, 2):
        assert mgr.check(step) is None  # every object listed, with its size and xxh3
        record = read_record(mgr._store, f"{root}/step_{step:08d}", step)
        files = {f.file for f in record.items["model"].files}
        assert files == {"layout.json", "pieces-00000.satchel", "pieces-00001.satchel"}
        restored = mgr.restore(step)  # 2 -> 1: every tensor assembled from both ranks' pieces
        _torch_bitwise(restored.items["model"], worker.plain_state(step))
        assert restored.extra == {"step": step}
    fs = fsspec.filesystem("s3", **server.options())
    names = _names(fs, f"{root}/step_00000002")
    assert names == {"model", "extra", "manifest.json"}  # each item a folder of pieces


def test_spec_11_14_a_failing_rank_commits_nothing(
    server: s3server.Server, ranks: tuple[str, list[str]]
) -> None:
    bucket, outs = ranks
    for r in range(2):
        assert f"rank {r} raised SatchelError" in outs[r], outs[r]
    root = f"s3://{bucket}/plain"
    mgr = satchel.CheckpointManager(root, storage_options=server.options())
    assert mgr.steps() == [1, 2] and mgr.restore().step == 2
    fs = fsspec.filesystem("s3", **server.options())
    assert not _names(fs, f"{root}/step_00000003")  # rank 0 removed what the ranks wrote


def test_spec_11_15_incremental_distributed_saves_share_the_pool(
    server: s3server.Server, ranks: tuple[str, list[str]]
) -> None:
    bucket, outs = ranks
    root = f"s3://{bucket}/inc"
    mgr = satchel.CheckpointManager(root, storage_options=server.options())
    last = worker.STEPS - 1
    assert mgr.steps() == [last - 1, last]
    assert all(f"rank {r} raised on the incremental save" in outs[r] for r in range(2))
    fs = fsspec.filesystem("s3", **server.options())
    blobs = _names(fs, f"{root}/blobs")
    # Exactly what the records list: the failed step's upload went with its failure.
    assert blobs == _referenced(mgr, root)
    assert not any(b.startswith(f"{worker.STEPS:08d}-") for b in blobs)
    assert not _names(fs, f"{root}/step_{worker.STEPS:08d}")
    # Each rank's half of the frozen backbone is still the pool object step 0 uploaded.
    assert len([b for b in blobs if b.startswith("00000000-")]) == 2
    layout = json.loads(fs.cat_file(f"{bucket}/inc/step_{last:08d}/model/layout.json"))
    assert layout["version"] == 2
    assert _names(fs, f"{root}/step_{last:08d}/model") == {"layout.json"}
    restored = mgr.restore()
    assert restored.step == last
    _torch_bitwise(restored.items["model"], worker.inc_state(last))
    assert all(i.valid for i in mgr.checkpoints(verify=True))
