"""Keras files (docs/formats.md#keras): genuine fixtures and their ground truth, hostile HDF5/zips.

Ground truth: ``tests/fixtures/keras/<fixture>.expected.{json,npz}`` (h5py + zipfile + json,
cross-checked by the fixture scripts against ``keras.saving.load_model``/``load_weights``).
"""

from __future__ import annotations

import base64
import io
import json
import marshal
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import fixture_truth
import satchel
from satchel.errors import (
    FormatError,
    FrameworkNotAvailableError,
    UnsafeContentError,
)
from satchel.formats import keras as keras_reader
from satchel.formats.detect import sniffed

FIXTURES = fixture_truth.FIXTURES / "keras"
assert FIXTURES.is_dir(), f"{FIXTURES}: the Keras fixtures are missing from tests/fixtures"
FIXTURE_NAMES = ["mlp.keras", "mlp.weights.h5", "mlp_legacy.h5"]


def h5py_or_skip() -> Any:
    import h5py

    return h5py


# -- ground truth ---------------------------------------------------------------------------------
def compare(node: dict[str, Any], got: Any, npz: Any, where: str) -> int:
    """Check ``got`` against one ground-truth node; returns the number of tensors checked."""
    kind = node["kind"]
    if kind == "dict":
        assert isinstance(got, dict), where
        assert list(got) == [it["key"] for it in node["items"]], where
        return sum(
            compare(it["value"], got[it["key"]], npz, f"{where}/{it['key']}")
            for it in node["items"]
        )
    if kind == "tensor":
        want = npz[node["npz"]]
        assert isinstance(got, np.ndarray), where
        assert list(got.shape) == node["shape"], where
        if node.get("bits_of") == "bfloat16":
            assert got.dtype == ml_dtypes.bfloat16, where
            got = got.view(np.uint16)
        assert str(got.dtype) == str(want.dtype) == node["dtype"], where
        assert got.tobytes() == want.tobytes(), where  # bitwise
        return 1
    if kind == "json":
        assert got == node["value"], where
        return 0
    if kind == "bytes":
        assert isinstance(got, bytes) and len(got) == node["len"], where
        return 0
    raise AssertionError(f"{where}: unexpected node kind {kind}")


def expected_attrs(node: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """h5 path -> attrs from the ground truth, JSON attributes back to their text form."""
    if "h5_path" in node:
        attrs = {
            k: json.dumps(v["json"]) if isinstance(v, dict) and "json" in v else v
            for k, v in node["attrs"].items()
        }
        out[node["h5_path"]] = attrs
    for it in node.get("items", []):
        if isinstance(it, dict) and "value" in it:
            expected_attrs(it["value"], out)
    return out


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_fixture_matches_ground_truth(fixture: str) -> None:
    h5py_or_skip()
    doc = json.loads((FIXTURES / f"{fixture}.expected.json").read_text())
    npz = np.load(FIXTURES / f"{fixture}.expected.npz", allow_pickle=False)
    assert satchel.detect(FIXTURES / fixture) == "keras"
    got = satchel.load(FIXTURES / fixture)
    assert compare(doc["root"], got, npz, fixture) == len(doc["tensors"])


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_shared_ground_truth_checker_agrees(fixture: str) -> None:
    h5py_or_skip()
    import fixture_truth as ft

    problems = ft.mismatches(satchel.load(FIXTURES / fixture), ft.load_truth(FIXTURES / fixture))
    # The ground truth's "same_object_as" for h5 datasets records reused Python ids of h5py
    # objects (vars/3 "is" vars/1 though their shapes differ), not sharing in the file.
    assert [p for p in problems if "is not the same object as" not in p] == []


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_attributes_match_ground_truth(fixture: str) -> None:
    h5py_or_skip()
    doc = json.loads((FIXTURES / f"{fixture}.expected.json").read_text())
    want = expected_attrs(doc["root"], {})
    got = keras_reader.attributes(FIXTURES / fixture)
    assert set(got) == set(want)
    for path, attrs in want.items():
        plain = {
            k: json.dumps(json.loads(v)) if k in ("model_config", "training_config") else v
            for k, v in got[path].items()
        }
        assert plain == attrs, path


def test_legacy_load_order_is_in_the_attributes() -> None:
    h5py_or_skip()
    attrs = keras_reader.attributes(FIXTURES / "mlp_legacy.h5")
    assert attrs["/model_weights"]["layer_names"] == ["dense", "dense_1"]
    assert attrs["/model_weights/dense"]["weight_names"] == ["mlp/dense/kernel", "mlp/dense/bias"]
    assert json.loads(attrs["/"]["model_config"])["class_name"] == "Sequential"


def test_open_and_resave() -> None:
    h5py_or_skip()
    with satchel.open(FIXTURES / "mlp.keras") as ck:
        names = ck.keys()
        assert "model.weights.h5.layers.dense.vars.0" in names
        assert ck["model.weights.h5.optimizer.vars.0"].dtype == np.int64
    tree = satchel.load(FIXTURES / "mlp.weights.h5")
    assert tree["layers"]["dense"]["vars"]["0"].shape == (20, 256)


def test_zip_crc_is_checked(tmp_path: Path) -> None:
    h5py_or_skip()
    raw = bytearray((FIXTURES / "mlp.keras").read_bytes())
    at = raw.find(b'"keras_version"')
    raw[at + 2] ^= 0x20  # metadata.json, a stored member
    (tmp_path / "x.keras").write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="CRC"):
        satchel.load(tmp_path / "x.keras")
    assert "metadata.json" in satchel.load(tmp_path / "x.keras", verify=False)


# -- datasets Keras writes ------------------------------------------------------------------------
def test_bfloat16_dataset_comes_back_as_bfloat16(tmp_path: Path) -> None:
    h5py = h5py_or_skip()
    values = np.array([1.5, -2.0, np.inf, 3.140625], dtype=ml_dtypes.bfloat16).reshape(2, 2)
    with h5py.File(tmp_path / "w.weights.h5", "w") as f:  # as keras' H5Entry.__setitem__ does
        ds = f.create_group("vars").create_dataset("0", data=values)
        ds.attrs["dtype"] = "bfloat16"
    got = satchel.load(tmp_path / "w.weights.h5")["vars"]["0"]
    assert got.dtype == ml_dtypes.bfloat16 and got.tobytes() == values.tobytes()


def test_other_dataset_kinds(tmp_path: Path) -> None:
    h5py = h5py_or_skip()
    with h5py.File(tmp_path / "k.h5", "w") as f:
        f["big_endian"] = np.arange(4, dtype=">i4")
        f["flags"] = np.array([True, False])
        f["names"] = np.array([b"a", b"bc"])
        f.create_dataset("text", data=["x", "yz"], dtype=h5py.string_dtype())
        f["scalar"] = np.float64(2.5)
        f.create_dataset("empty", data=h5py.Empty("f4"))
        f.create_dataset("packed", data=np.ones((64, 64)), compression="gzip", shuffle=True)
        f["shared"] = f["flags"]  # a second hard link to the same dataset
    got = satchel.load(tmp_path / "k.h5")
    assert got["big_endian"].dtype == np.dtype("<i4") and got["big_endian"].tolist() == [0, 1, 2, 3]
    assert got["flags"].tolist() == [True, False] and got["shared"] is got["flags"]
    assert got["names"] == [b"a", b"bc"] and got["text"] == [b"x", b"yz"]
    assert got["scalar"].shape == () and got["scalar"] == 2.5
    assert got["empty"] is None and got["packed"].sum() == 64 * 64


# -- hostile HDF5 (docs/formats.md#hostile-containers, Z7 and Z8) --------------------------------
def hostile_h5(path: Path, build: Any) -> Path:
    h5py = h5py_or_skip()
    with h5py.File(path, "w") as f:
        build(h5py, f)
    return path


def _external_link(h5py: Any, f: Any) -> None:
    f["evil"] = h5py.ExternalLink("/etc/passwd", "/x")


def _soft_link(h5py: Any, f: Any) -> None:
    f["a"] = np.zeros(2)
    f["evil"] = h5py.SoftLink("/a")


def _virtual(h5py: Any, f: Any) -> None:
    layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
    layout[:] = h5py.VirtualSource("/etc/other.h5", "x", shape=(4,))
    f.create_virtual_dataset("evil", layout)


def _external_storage(h5py: Any, f: Any) -> None:
    f.create_dataset("evil", shape=(4,), dtype="f4", external=[("/etc/passwd", 0, 16)])


def _plugin_filter(h5py: Any, f: Any) -> None:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk((4,))
    dcpl.set_filter(307, h5py.h5z.FLAG_OPTIONAL, (1,))
    space = h5py.h5s.create_simple((4,))
    h5py.h5d.create(f.id, b"evil", h5py.h5t.NATIVE_FLOAT, space, dcpl=dcpl)


def _cycle(h5py: Any, f: Any) -> None:
    g = f.create_group("g")
    g["self"] = g


def _fill_value_bomb(h5py: Any, f: Any) -> None:
    f.create_dataset("evil", shape=(1 << 40,), dtype="f8")  # never written: no storage


def _compound(h5py: Any, f: Any) -> None:
    f["evil"] = np.zeros(2, dtype=[("a", "f4"), ("b", "i2")])


def _references(h5py: Any, f: Any) -> None:
    f.create_dataset("evil", shape=(1,), dtype=h5py.ref_dtype)


def _untagged_opaque(h5py: Any, f: Any) -> None:
    f["evil"] = np.zeros(2, dtype=ml_dtypes.bfloat16)  # V2 without Keras' dtype tag


HOSTILE_H5 = {
    "external link": (_external_link, UnsafeContentError),
    "soft link": (_soft_link, FormatError),
    "virtual dataset": (_virtual, UnsafeContentError),
    "external storage": (_external_storage, UnsafeContentError),
    "filter plugin": (_plugin_filter, UnsafeContentError),
    "group cycle": (_cycle, FormatError),
    "fill-value bomb": (_fill_value_bomb, FormatError),
    "compound type": (_compound, FormatError),
    "reference type": (_references, FormatError),
    "untagged opaque": (_untagged_opaque, FormatError),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_H5))
def test_hostile_hdf5_is_refused(tmp_path: Path, case: str) -> None:
    build, error = HOSTILE_H5[case]
    path = hostile_h5(tmp_path / "x.h5", build)
    with pytest.raises(error) as err:
        satchel.load(path)
    assert type(err.value) is error and "x.h5" in str(err.value)


def test_truncations_and_bit_flips_raise_only_satchel_errors(tmp_path: Path) -> None:
    """Run in a child: a crash inside the HDF5 C library must fail the test, not kill pytest."""
    h5py_or_skip()
    script = textwrap.dedent(
        """
        import random, sys
        from pathlib import Path
        import satchel
        from satchel.errors import SatchelError
        src = Path(sys.argv[1]).read_bytes()
        rng = random.Random(11)
        out = Path(sys.argv[2])
        bad = []
        for i in range(400):
            raw = bytearray(src[: rng.randrange(len(src))] if i % 2 else src)
            if not i % 2:
                for _ in range(rng.randint(1, 8)):
                    raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            out.write_bytes(bytes(raw))
            try:
                satchel.load(out)
            except SatchelError:
                pass
            except Exception as e:
                bad.append(f"{type(e).__name__}: {e}")
        print("ESCAPED", bad[:3]) if bad else print("clean")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(satchel.__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(FIXTURES / "mlp_legacy.h5"), str(tmp_path / "x.h5")],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "clean", proc.stdout


def test_missing_h5py_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.h5"
    path.write_bytes(keras_reader.HDF5_MAGIC + b"\0" * 600)
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(FrameworkNotAvailableError, match="pip install satchel\\[keras\\]"):
        satchel.load(path)


# -- hostile .keras zips (docs/formats.md#keras-zip: rules P11, Z1, Z3; strict JSON) -------------
def keras_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def small_weights_h5() -> bytes:
    h5py = h5py_or_skip()
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_group("layers/dense/vars")["0"] = np.ones((2, 2), np.float32)
    return buf.getvalue()


def test_config_naming_code_is_only_data(tmp_path: Path) -> None:
    h5py_or_skip()
    canary_dir = tmp_path / "mods"
    canary_dir.mkdir()
    marker = tmp_path / "pwned"
    (canary_dir / "satchel_canary_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\ndef boom(*a): return a\n"
    )
    lambda_code = base64.b64encode(marshal.dumps(compile("1", "x", "eval"))).decode()
    config = {
        "module": "satchel_canary_evil",
        "class_name": "boom",
        "registered_name": "satchel_canary_evil>boom",
        "config": {
            "layers": [
                {"module": "keras.layers", "class_name": "Lambda",
                 "config": {"function": {"class_name": "__lambda__",
                                         "config": {"code": lambda_code}}}},
                {"module": "os", "class_name": "system", "config": {"command": "touch pwned"}},
                {"module": "builtins", "class_name": "eval", "config": "__import__('os')"},
            ]
        },
    }  # fmt: skip
    path = keras_zip(
        tmp_path / "evil.keras",
        {
            "metadata.json": b'{"keras_version": "3.15.1"}',
            "config.json": json.dumps(config).encode(),
            "model.weights.h5": small_weights_h5(),
        },
    )
    events: list[tuple[str, Any]] = []

    def hook(event: str, args: Any) -> None:
        if event in ("import", "exec", "os.system", "subprocess.Popen", "os.posix_spawn"):
            events.append((event, args))

    sys.path.insert(0, str(canary_dir))
    try:
        sys.addaudithook(hook)  # (hooks cannot be removed; this one only records)
        events.clear()
        got = satchel.load(path)
        seen = list(events)
        events.clear()
    finally:
        sys.path.remove(str(canary_dir))
    assert got["config.json"] == config  # returned as data, nothing resolved
    assert got["model.weights.h5"]["layers"]["dense"]["vars"]["0"].tolist() == [[1, 1], [1, 1]]
    assert "satchel_canary_evil" not in sys.modules and not marker.exists()
    assert not [e for e in seen if e[0] not in ("import", "exec")]
    # exec events only from importing real library modules (zipfile may load a codec), never
    # from code the file brought or named
    for _, (code, *_rest) in [e for e in seen if e[0] == "exec"]:
        origin = Path(getattr(code, "co_filename", "<dynamic>"))
        assert origin.is_file() and canary_dir not in origin.parents, origin
    assert not [e for e in seen if "canary" in str(e[1][0]) or e[1][0] in ("os", "builtins")]


def test_npz_weights_are_refused(tmp_path: Path) -> None:
    path = keras_zip(
        tmp_path / "x.keras",
        {
            "metadata.json": b"{}",
            "config.json": b"{}",
            "model.weights.npz": b"PK\x05\x06" + b"\0" * 18,
        },
    )
    with pytest.raises(UnsafeContentError, match="pickled"):
        satchel.load(path)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (b'{"a": 1, "a": 2}', "repeats a key"),
        (b'{"a": ', "not valid UTF-8 JSON"),
        (b"\xff\xfe{}", "not valid UTF-8 JSON"),
        (b"[" * 200_000 + b"]" * 200_000, "not valid UTF-8 JSON"),
    ],
)
def test_bad_json_members(tmp_path: Path, config: bytes, match: str) -> None:
    path = keras_zip(tmp_path / "x.keras", {"metadata.json": b"{}", "config.json": config})
    with pytest.raises(FormatError, match=match):
        satchel.load(path)


def test_escaping_member_names_are_refused(tmp_path: Path) -> None:
    path = keras_zip(tmp_path / "x.keras", {"metadata.json": b"{}", "../../evil.json": b"{}"})
    with pytest.raises(FormatError, match="unsafe"):
        satchel.load(path)


def test_h5_member_must_be_hdf5(tmp_path: Path) -> None:
    path = keras_zip(tmp_path / "x.keras", {"metadata.json": b"{}", "model.weights.h5": b"nope"})
    with pytest.raises(FormatError, match="not an HDF5 file"):
        satchel.load(path)


def test_assets_come_back_as_bytes(tmp_path: Path) -> None:
    path = keras_zip(
        tmp_path / "x.keras",
        {"metadata.json": b"{}", "config.json": b"{}", "assets/vocab.txt": b"a\nb\n"},
    )
    assert satchel.load(path) == {
        "metadata.json": {},
        "config.json": {},
        "assets/vocab.txt": b"a\nb\n",
    }


def test_detection_is_by_content(tmp_path: Path) -> None:
    h5py_or_skip()
    (tmp_path / "weights.bin").write_bytes(small_weights_h5())  # no .h5 name
    assert satchel.detect(tmp_path / "weights.bin") == "keras"
    plain = keras_zip(tmp_path / "model.keras", {"x.txt": b"hello"})  # a .keras name only
    assert sniffed(plain) != "keras"
