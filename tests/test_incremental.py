"""Incremental checkpoints (SPEC 8.17-8.19, 10.7): write only what changed, reference the rest.

* A torch fine-tuning run (frozen backbone >= 95% of the bytes, a small adapter trained with
  Adam) saved at every step: later steps add <= 5% of the state on disk, every step restores
  bit for bit, loads, verifies, lists and converts on its own.
* Retention keeps only what kept steps reference; damage to a pool file makes exactly the
  steps that reference it invalid.
* A hash collision (same length and xxh3-64, other bytes) is stored, never deduplicated.
* Sharded items (``max_shard_size``) and a 2-rank gloo run save incrementally.
* SIGKILL at every stage of a save (pool write, before and after the commit, retention, the
  collection): every kept step stays valid, restore gives what was committed, and the next
  save leaves no pool file that no step references.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import satchel
from satchel import CheckpointManager, CheckpointRoot, CheckpointWarning
from satchel._io.atomic import TMP_MARKER
from satchel._shards.index import parse_index
from satchel.errors import FormatError, UsageError

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
WORKER = HERE / "incremental_worker.py"
DIST_WORKER = HERE / "incremental_dist_worker.py"


# -- helpers ---------------------------------------------------------------------------------
def files_of(root: Path) -> dict[str, tuple[int, int]]:
    """Every regular file under ``root``: relative path -> (inode, size)."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_ino, st.st_size)
    return out


def added(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> int:
    """Bytes of the files that a save created (new path or new inode)."""
    return sum(size for path, (ino, size) in after.items() if before.get(path, (None,))[0] != ino)


def pool_files(root: Path) -> set[str]:
    blobs = root / "blobs"
    return {p.name for p in blobs.iterdir()} if blobs.is_dir() else set()


def referenced(root: Path) -> set[str]:
    out: set[str] = set()
    for info in CheckpointRoot(root).checkpoints(verify=False):
        if info.record is not None:
            out.update(f.file for f in info.record.pool)
    return out


def index_of(root: Path, step: int, item: str) -> dict[str, Any]:
    raw = (root / f"step_{step:08d}" / item / "model.safetensors.index.json").read_bytes()
    doc: dict[str, Any] = json.loads(raw)
    return doc


class FineTune(torch.nn.Module):
    """A frozen backbone (4 MiB) and a LoRA-like adapter (32 KiB) on top."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.backbone = torch.nn.Sequential(
            torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512)
        )
        for _ in range(2):
            self.backbone.append(torch.nn.Linear(512, 512))
        for p in self.backbone.parameters():
            p.requires_grad_(False)
            p.copy_(torch.randn(p.shape, generator=g))
        self.down = torch.nn.Linear(512, 8, bias=False)
        self.up = torch.nn.Linear(8, 512, bias=False)
        torch.nn.init.zeros_(self.up.weight)  # LoRA's B starts at zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x)
        return h + self.up(self.down(h))


def _state_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    n = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    for s in opt.state_dict()["state"].values():
        n += sum(t.numel() * t.element_size() for t in s.values() if isinstance(t, torch.Tensor))
    return n


def _snapshot(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "opt": {
            i: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
            for i, s in opt.state_dict()["state"].items()
        },
    }


def _fine_tune(root: Path, steps: int, **kw: Any) -> tuple[list[dict[str, Any]], list[int], int]:
    """Train ``steps`` steps, saving each incrementally. Returns each step's state, the bytes
    each save added to the root, and the state's size."""
    torch.manual_seed(1)
    model = FineTune()
    opt = torch.optim.Adam([model.down.weight, model.up.weight], lr=1e-2)
    saved, grew = [], []
    with CheckpointManager(root, incremental=True, **kw) as mgr:
        for step in range(steps):
            x = torch.randn(4, 512)
            loss = model(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            before = files_of(root)
            mgr.save(step, model=model, optimizer=opt, metrics={"loss": loss.item()})
            grew.append(added(before, files_of(root)))
            saved.append(_snapshot(model, opt))
    return saved, grew, _state_bytes(model, opt)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _restored(root: Path, step: int) -> dict[str, Any]:
    torch.manual_seed(99)
    model = FineTune()
    opt = torch.optim.Adam([model.down.weight, model.up.weight], lr=1e-2)
    CheckpointRoot(root).restore(step, model=model, optimizer=opt)
    return _snapshot(model, opt)


# -- 8.17: incremental saves -----------------------------------------------------------------
def test_spec_8_17_fine_tuning_adds_under_5_percent_and_every_step_restores_bitwise(
    tmp_path: Path,
) -> None:
    root = tmp_path / "run"
    saved, grew, size = _fine_tune(root, 5)
    frozen = sum(p.numel() * 4 for p in FineTune().backbone.parameters())
    assert frozen >= 0.95 * size  # the premise: the backbone is >= 95% of the state
    assert grew[0] >= frozen  # the first save writes everything
    for step, n in enumerate(grew[1:], start=1):
        assert n <= 0.05 * size, f"step {step} added {n} bytes of a {size}-byte state"
    for step, want in enumerate(saved):
        assert _equal(_restored(root, step), want), step
    # The backbone's bytes are stored once: one pool file holds them, every step names it.
    assert sum((root / "blobs" / f).stat().st_size for f in pool_files(root)) < 1.2 * size


def test_spec_8_17_every_step_loads_verifies_lists_and_converts_on_its_own(
    tmp_path: Path,
) -> None:
    root = tmp_path / "run"
    saved, _, _ = _fine_tune(root, 3)
    for step, want in enumerate(saved):
        item = root / f"step_{step:08d}" / "model"
        sd = satchel.load(item, framework="torch")
        assert _equal(sd, want["model"])
        with satchel.open(item / "model.safetensors.index.json", framework="torch") as ck:
            assert torch.equal(ck["up.weight"], want["model"]["up.weight"])
        assert satchel.verify(root / f"step_{step:08d}").ok
        assert satchel.verify(item).ok
        out = tmp_path / f"converted-{step}.safetensors"
        satchel.convert(item, out)
        assert _equal(satchel.load(out, framework="torch"), want["model"])
    report = satchel.verify(root)
    assert report.ok and report.checked == 3
    listed = subprocess.run(
        [sys.executable, "-m", "satchel", "ls", str(root), "--json"],
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(listed.stdout)
    steps = rows["checkpoints"] if isinstance(rows, dict) else rows
    assert [r["step"] for r in steps] == [0, 1, 2]
    assert all(r["valid"] for r in steps)
    # Sizes count the pool files each step references: the whole state, not the index.
    assert all(r["size"] > 4 << 20 for r in steps)


def test_spec_8_17_a_hash_collision_is_stored_not_deduplicated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import satchel._plan
    import satchel._read.native

    a = np.arange(4096, dtype=np.float32)
    b = a.copy()
    b[100] = -1.0  # same length, other bytes
    real = satchel._plan.xxh3_hex
    h_a = real(a.view(np.uint8))

    def colliding(data: Any) -> str:
        # xxh3-64 with a collision: b's bytes hash as a's (writing and reading alike).
        raw = np.asarray(data).reshape(-1).view(np.uint8)
        return (
            h_a if raw.nbytes == b.nbytes and np.array_equal(raw, b.view(np.uint8)) else real(data)
        )

    monkeypatch.setattr(satchel._plan, "xxh3_hex", colliding)
    monkeypatch.setattr(satchel._read.native, "xxh3_hex", colliding)
    assert satchel._plan.digests(satchel._plan.plan_save({"w": b}))[0] == h_a  # collides
    root = tmp_path / "run"
    with CheckpointManager(root, incremental=True) as mgr:
        mgr.save(1, model={"w": a})
        mgr.save(2, model={"w": b})  # same length and "xxh3" as step 1's: must be written
        mgr.save(3, model={"w": b})  # the same bytes as step 2's: reused
        (ref1,) = index_of(root, 1, "model")["weight_map"].values()
        (ref2,) = index_of(root, 2, "model")["weight_map"].values()
        (ref3,) = index_of(root, 3, "model")["weight_map"].values()
        assert ref2 != ref1  # not deduplicated against the colliding tensor
        assert ref3 == ref2  # deduplicated against the equal one
        assert np.array_equal(mgr.restore(1).items["model"]["w"], a)
        assert np.array_equal(mgr.restore(2).items["model"]["w"], b)
        assert np.array_equal(mgr.restore(3).items["model"]["w"], b)


def test_spec_8_17_sharded_items_write_only_the_shards_of_new_tensors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    state = {f"layer{i}": rng.standard_normal((128, 256), dtype=np.float32) for i in range(8)}
    root = tmp_path / "run"
    with CheckpointManager(root, incremental=True, max_shard_size=300_000) as mgr:
        mgr.save(0, model=state)
        first = pool_files(root)
        assert len(first) == 4  # 8 tensors of 128 KiB, two per pool file of <= 300 kB
        old = state["layer3"]
        state["layer3"] = old + 1
        before = files_of(root)
        mgr.save(1, model=state)
        grew = added(before, files_of(root))
        assert len(pool_files(root) - first) == 1
        assert grew < 128 * 256 * 4 + 8192  # one tensor, an index and a record
        for step, want_l3 in ((0, old), (1, state["layer3"])):
            got = satchel.load(root / f"step_{step:08d}" / "model")
            assert np.array_equal(got["layer3"], want_l3)
            assert all(np.array_equal(got[k], state[k]) for k in state if k != "layer3")
        # Per save, incremental is an option too: a full save writes its own shards again.
        mgr.save(2, model=state, incremental=False)
        assert len(list((root / "step_00000002" / "model").glob("model-*.safetensors"))) == 4
        assert satchel.verify(root).ok


def test_spec_8_17_async_saves_and_items_without_tensors(tmp_path: Path) -> None:
    root = tmp_path / "run"
    w = np.ones((256, 256), np.float32)
    with CheckpointManager(root, incremental=True) as mgr:
        for step in range(3):
            mgr.save(step, model={"w": w, "b": np.full(4, step)}, extra={"s": step}, blocking=False)
        mgr.wait()
        r = mgr.restore()
    assert r.step == 2 and r.extra == {"s": 2}
    assert np.array_equal(r.items["model"]["b"], np.full(4, 2))
    assert (root / "step_00000002" / "extra.satchel").is_file()  # no tensors: one file
    with pytest.raises(UsageError, match="incremental"):
        CheckpointManager(tmp_path / "other", incremental="yes")  # type: ignore[arg-type]


def test_spec_8_17_references_resolve_only_into_the_roots_pool(tmp_path: Path) -> None:
    root = tmp_path / "run"
    with CheckpointManager(root, incremental=True) as mgr:
        mgr.save(1, model={"w": np.arange(10.0)})
    item = root / "step_00000001" / "model"
    # A copy of the step folder outside its root has no pool to read from.
    elsewhere = tmp_path / "copy" / "step_00000001"
    shutil.copytree(root / "step_00000001", elsewhere)
    with pytest.raises(FormatError, match="does not exist"):
        satchel.load(elsewhere / "model")
    # A pool folder that is a link is never followed.
    (root / "blobs").rename(tmp_path / "real-blobs")
    (root / "blobs").symlink_to(tmp_path / "real-blobs")
    with pytest.raises(FormatError, match="not a folder"):
        satchel.load(item)
    (root / "blobs").unlink()
    (tmp_path / "real-blobs").rename(root / "blobs")
    assert np.array_equal(satchel.load(item)["w"], np.arange(10.0))
    # References are pool file names, nothing else: a path is refused before any open.
    index = item / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    for bad in ("pool:../../x.safetensors:w", "pool:blobs/a.safetensors:w", "pool:x"):
        doc["weight_map"] = {"w": bad}
        with pytest.raises(FormatError, match="pool reference"):
            parse_index(json.dumps(doc).encode(), where="index", pool=True)
    # A reader that does not resolve pool references refuses them as any non-plain name.
    with pytest.raises(FormatError, match="not a plain file"):
        parse_index(index.read_bytes(), where="index")


# -- 8.18: the commit record lists the pool files --------------------------------------------
def test_spec_8_18_record_version_3_lists_pool_files_and_validity_covers_them(
    tmp_path: Path,
) -> None:
    root = tmp_path / "run"
    big = np.arange(65536, dtype=np.float32)
    with CheckpointManager(root, incremental=True) as mgr:
        mgr.save(1, model={"big": big, "small": np.zeros(8)})
        mgr.save(2, model={"big": big, "small": np.ones(8)})
    record = json.loads((root / "step_00000002" / "manifest.json").read_text())
    assert record["version"] == 3
    listed = {f["file"] for f in record["pool"]}
    assert listed == {r.split(":")[1] for r in index_of(root, 2, "model")["weight_map"].values()}
    for f in record["pool"]:
        assert (root / "blobs" / f["file"]).stat().st_size == f["size"]
    # Damage the pool file only step 2 references: step 2 is invalid, step 1 is restored.
    (only2,) = listed - {f.file for f in CheckpointRoot(root).checkpoints()[0].record.pool}  # type: ignore[union-attr]
    with open(root / "blobs" / only2, "r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 1]))
    assert CheckpointRoot(root).check(1) is None
    assert "does not match its checksum" in str(CheckpointRoot(root).check(2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert CheckpointRoot(root).restore().step == 1
    assert any(issubclass(w.category, CheckpointWarning) for w in caught)
    # A version this satchel does not know is refused by number, with what to do.
    text = (
        (root / "step_00000001" / "manifest.json")
        .read_text()
        .replace('"version": 3', '"version": 4')
    )
    (root / "step_00000001" / "manifest.json").write_text(text)
    assert "upgrade" in str(CheckpointRoot(root).check(1))


# -- 8.19: retention and collection ----------------------------------------------------------
def test_spec_8_19_retention_deletes_old_steps_and_the_pool_files_only_they_referenced(
    tmp_path: Path,
) -> None:
    root = tmp_path / "run"
    saved, _, _ = _fine_tune(root, 6, keep_last=2)
    assert CheckpointRoot(root).steps() == [4, 5]
    assert pool_files(root) == referenced(root)  # nothing unreferenced left behind
    assert all(i.valid for i in CheckpointRoot(root).checkpoints())
    for step in (4, 5):
        assert _equal(_restored(root, step), saved[step])
    # A step folder whose record cannot be read might reference anything: nothing is collected.
    with CheckpointManager(root, incremental=True) as mgr:
        stray = root / "blobs" / "00000099-0123abcd-00001.safetensors"
        stray.write_bytes(b"x")
        (root / "step_00000007").mkdir()
        (root / "step_00000007" / "manifest.json").write_text("{damaged")
        mgr.save(8, model={"w": np.zeros(3)})
        assert stray.exists()
        shutil.rmtree(root / "step_00000007")
        mgr.save(9, model={"w": np.zeros(3)})
        assert not stray.exists()


def _run_worker(root: Path, *args: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(root), *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,  # a killed worker is what the test wants
    )
    return [*proc.stdout.splitlines(), f"rc {proc.returncode}", proc.stderr]


@pytest.mark.parametrize(
    "point", ["pool-write", "before-commit", "after-commit", "retention", "collect"]
)
def test_spec_8_19_sigkill_anywhere_breaks_no_kept_step_and_leaks_at_most_one_save(
    tmp_path: Path, point: str
) -> None:
    root = tmp_path / "run"
    out = _run_worker(root, "--max-steps", "8", "--kill-at", point, "--kill-on-save", "4")
    assert "rc -9" in out, out  # killed where asked, during the save of step 3
    committed = {int(s): d for _, s, d in (ln.split() for ln in out if ln.startswith("committed"))}
    writing = {int(s): d for _, s, d in (ln.split() for ln in out if ln.startswith("writing"))}
    assert sorted(committed) == [0, 1, 2] and 3 in writing
    # Every kept (committed) step is valid; restore gives step 3 if it was committed, else 2.
    infos = CheckpointRoot(root).checkpoints()
    assert infos and all(i.valid for i in infos), [(i.step, i.problem) for i in infos]
    ready = _run_worker(root, "--max-steps", "1")
    assert "rc 0" in ready, ready
    _, resumed, digest = ready[0].split()
    want = 3 if point in ("after-commit", "retention", "collect") else 2
    assert int(resumed) == want
    assert digest == (writing[3] if want == 3 else committed[2])
    # One more save later: no temporary entry, no pool file that no step references.
    assert pool_files(root) == referenced(root)
    assert not [p for p in root.rglob("*") if TMP_MARKER in p.name]
    assert all(i.valid for i in CheckpointRoot(root).checkpoints())


# -- 10.7: distributed -----------------------------------------------------------------------
def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_spec_10_7_two_ranks_save_incrementally(tmp_path: Path) -> None:
    sys.path.insert(0, str(HERE))
    from incremental_dist_worker import expected

    root = tmp_path / "run"
    port = _port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(DIST_WORKER), str(root), "4"],
            env={**ENV, "RANK": str(r), "WORLD_SIZE": "2", "MASTER_PORT": str(port)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert all(p.returncode == 0 for p in procs), outs
    assert CheckpointRoot(root).steps() == [2, 3]
    assert satchel.verify(root).ok
    for step in (2, 3):
        got = satchel.load(root / f"step_{step:08d}" / "model", framework="torch")
        want = expected(step)
        assert torch.equal(got["backbone"], want["backbone"])
        assert torch.equal(got["adapter"], want["adapter"])
        layout = json.loads((root / f"step_{step:08d}" / "model" / "layout.json").read_text())
        assert layout["version"] == 2
        assert not list((root / f"step_{step:08d}" / "model").glob("pieces-*"))
    # The backbone's two halves were written once (step 0), by their ranks; each later step
    # added one small pool file (the adapter), and retention collected those of steps 0-1.
    sizes = sorted((root / "blobs" / f).stat().st_size for f in pool_files(root))
    assert len(sizes) == 4 and sizes[0] < 4096 and sizes[1] < 4096, sizes
    assert sizes[2] > 200_000 and sizes[3] > 200_000
    assert pool_files(root) == referenced(root)
