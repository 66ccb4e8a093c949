"""The ``satchel`` command: output text, ``--json`` and exit codes.

``run`` starts the real command (``python -m satchel``) in a subprocess: every command's exit
codes, JSON, error lines and colour rules are checked that way. The finer checks of what is
printed call the same ``main()`` in process (``cli``), which keeps the file well under a minute.
The pseudo-terminal test (colours and progress bars on a terminal only) is in test_cli_pty.py.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import satchel
from fixture_truth import FIXTURES
from satchel._cli import main
from satchel._cli._compare import compare
from satchel._cli._diff import layer_of
from satchel._cli._stats import tensor_stats

REPO = Path(__file__).resolve().parents[1]
ESC = "\x1b["


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m satchel ARGS`` with stdout and stderr captured (pipes, so no terminal)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    full_env["PYTHONPATH"] = str(REPO / "src")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "satchel", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The same ``main()`` in this process, its streams captured (no terminal, so no colour)."""
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in args], stdout=out, stderr=err)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def run_json(*args: str | Path, code: int = 0, subprocess: bool = False) -> dict[str, Any]:
    r = (run if subprocess else cli)(*args, "--json")
    assert r.returncode == code, r.stderr
    doc = json.loads(r.stdout)
    assert doc["satchel_cli"] == 1
    assert doc["command"] == str(args[0])
    return doc


def needs(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"fixture {path} not available")
    return path


# -- files -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    model = {
        "encoder": {"0": {"weight": w, "bias": np.zeros(32, np.float32)}},
        "head": {"weight": np.ones((10, 32), np.float64)},
        "step": np.array(7, np.int64),
        "epoch": 3,
        "name": "mlp",
    }
    out = {"model": d / "model.satchel"}
    satchel.save(model, out["model"], metadata={"note": "hello"})

    tuned = {
        "encoder": {"0": {"weight": w + 0.01, "bias": np.zeros(32, np.float16)}},
        "head": {"weight": np.ones((10, 16), np.float64)},
        "extra": np.arange(4),
    }
    out["tuned"] = d / "tuned.satchel"
    satchel.save(tuned, out["tuned"])

    out["flipped"] = d / "flipped.satchel"
    data = bytearray(out["model"].read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor's bytes: readable, but its checksum fails
    out["flipped"].write_bytes(bytes(data))
    out["truncated"] = d / "truncated.satchel"
    out["truncated"].write_bytes(out["model"].read_bytes()[:20])  # header cut short

    special = np.array([1.0, -2.0, np.nan, np.inf, 4.0, -np.inf, np.nan], np.float32)
    out["special"] = d / "special.satchel"
    satchel.save(
        {"special": special, "z": np.array([3 + 4j, 0 - 1j]), "flag": np.array([True, False])},
        out["special"],
    )

    root = d / "run"
    mgr = satchel.CheckpointManager(root, keep_last=2, keep_every=100)
    for step in (100, 150, 200):
        mgr.save(step, model={"w": w * step}, metrics={"loss": 1.0 / step}, extra={"e": step})
    out["root"] = root
    return out


# -- conventions -----------------------------------------------------------------------------------
def test_help_lists_every_command_and_exit_codes() -> None:
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("inspect", "verify", "diff", "convert", "ls"):
        assert cmd in r.stdout
    assert "exit status" in r.stdout


@pytest.mark.parametrize("cmd", ["inspect", "verify", "diff", "convert", "ls"])
def test_each_command_help_has_examples_and_common_options(
    cmd: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([cmd, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text
    for opt in ("--json", "--no-progress", "--color", "--debug"):
        assert opt in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"satchel {satchel.__version__}"


def test_usage_error_is_one_line_with_exit_2() -> None:
    r = run("inspect", "--no-such-option", "x")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "error:" in r.stderr and "--help" in r.stderr


def test_missing_path_is_one_clear_line_and_debug_shows_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    r = run("inspect", missing)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == f"satchel: error: {missing}: no such file or folder\n"
    r = run("inspect", missing, "--debug")
    assert r.returncode == 2
    assert "Traceback (most recent call last)" in r.stderr
    assert r.stderr.rstrip().endswith(f"satchel: error: {missing}: no such file or folder")


def test_error_with_json_also_prints_a_json_error_document(tmp_path: Path) -> None:
    doc = run_json("inspect", tmp_path / "nope", code=2, subprocess=True)
    assert doc["error"]["type"] == "SatchelFileNotFoundError"
    assert "no such file" in doc["error"]["message"]


def test_json_error_names_the_file_and_field_as_data(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((50).to_bytes(8, "little") + b'{"w": {"dtype": "F32", "shape": [2], "x": 1}}')
    doc = run_json("inspect", bad, code=2, subprocess=True)
    assert doc["error"]["type"] == "FormatError"
    assert doc["error"]["path"] == str(bad)


def test_unrecognised_file_says_what_is_wrong(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"definitely not a tensor file" * 4)
    r = cli("inspect", junk)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "not a format satchel reads" in r.stderr


def test_pipes_and_no_color_give_no_ansi_escapes(files: dict[str, Path]) -> None:
    r = run("verify", files["flipped"])
    assert r.returncode == 1 and ESC not in r.stdout + r.stderr  # a pipe is not a terminal
    r = run("inspect", files["model"], "--color", "always", env={"NO_COLOR": "1"})
    assert ESC in r.stdout  # the explicit flag wins over NO_COLOR (no-color.org)
    r = run("inspect", files["model"], env={"NO_COLOR": "1", "TERM": "xterm"})
    assert ESC not in r.stdout + r.stderr
    assert ESC not in cli("inspect", files["model"], "--color", "never").stdout


def test_python_m_satchel_and_the_entry_point_are_one_main() -> None:
    from satchel import _cli

    assert callable(_cli.main)
    main_py = (REPO / "src" / "satchel" / "__main__.py").read_text()
    assert "from ._cli import main" in main_py


# -- inspect ---------------------------------------------------------------------------------------
def test_inspect_shows_format_tree_table_totals_metadata(files: dict[str, Path]) -> None:
    r = cli("inspect", files["model"])
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "satchel file" in out and "xxh3-64 per tensor" in out
    assert "note=hello" in out
    # the tree: nested containers, tensors with dtype and shape, plain values
    assert "├── encoder" in out
    assert "weight  float32 [64, 32]" in out
    assert "epoch = 3" in out and "name  = 'mlp'" in out
    # the table and the totals per dtype
    assert "  encoder.0.weight  float32  [64, 32]     2,048  8.0 KiB\n" in out
    assert "  float64        1       320   2.5 KiB\n" in out
    assert "  total          4     2,401  10.6 KiB\n" in out


def test_inspect_json(files: dict[str, Path]) -> None:
    doc = run_json("inspect", files["model"], subprocess=True)
    assert doc["kind"] == "file" and doc["format"] == "satchel"
    assert doc["checksummed"] is True
    assert doc["metadata"] == {"note": "hello"}
    assert doc["size"] == files["model"].stat().st_size
    names = [t["name"] for t in doc["tensors"]]
    assert names == ["encoder.0.weight", "encoder.0.bias", "head.weight", "step"]
    w = doc["tensors"][0]
    assert w == {
        "name": "encoder.0.weight",
        "dtype": "float32",
        "shape": [64, 32],
        "elements": 2048,
        "nbytes": 8192,
    }
    assert {"name": "epoch", "type": "int", "value": 3} in doc["values"]
    assert doc["totals"]["tensors"] == 4
    assert doc["totals"]["by_dtype"]["float32"] == {"tensors": 2, "elements": 2080, "nbytes": 8320}
    assert doc["commit"] is None and doc["checkpoints"] is None


def test_inspect_stats_match_numpy_and_count_nan_inf(files: dict[str, Path]) -> None:
    doc = run_json("inspect", files["special"], "--stats")
    by = {t["name"]: t["stats"] for t in doc["tensors"]}
    finite = np.array([1.0, -2.0, 4.0])
    s = by["special"]
    assert (s["nan"], s["inf"], s["of"]) == (2, 2, "value")
    assert s["min"] == -2.0 and s["max"] == 4.0
    assert math.isclose(s["mean"], finite.mean()) and math.isclose(s["std"], finite.std())
    z = by["z"]
    assert z["of"] == "magnitude" and z["max"] == 5.0 and z["min"] == 1.0
    assert by["flag"]["mean"] == 0.5
    r = cli("inspect", files["special"], "--stats")
    assert "nan" in r.stdout and "std" in r.stdout


def test_inspect_filter(files: dict[str, Path]) -> None:
    doc = run_json("inspect", files["model"], "--filter", "encoder.*")
    assert [t["name"] for t in doc["tensors"]] == ["encoder.0.weight", "encoder.0.bias"]
    assert doc["totals"]["tensors"] == 2 and doc["filter"] == ["encoder.*"]
    r = cli("inspect", files["model"], "--filter", "head.*", "--filter", "step")
    assert "head.weight" in r.stdout and "encoder.0.bias" not in r.stdout


def test_inspect_torch_fixture_without_torch_code() -> None:
    pt = needs(FIXTURES / "torch" / "mlp_checkpoint.pt")
    r = cli("inspect", pt)
    assert r.returncode == 0, r.stderr
    assert "torch file" in r.stdout
    assert "epoch = 1" in r.stdout and "lr" in r.stdout
    doc = run_json("inspect", pt)
    assert doc["format"] == "torch" and doc["totals"]["tensors"] == 16
    assert doc["checksummed"] is True  # every zip member's CRC-32 is checked on read


@pytest.mark.parametrize("name", ["mlp_state_dict", "mlp_checkpoint", "legacy_snapshot"])
def test_inspect_oneflow_folders(name: str) -> None:
    folder = needs(FIXTURES / "oneflow" / name)
    doc = run_json("inspect", folder)
    assert doc["format"] == "oneflow"
    assert any(t["name"].endswith("0.weight") for t in doc["tensors"])


def test_inspect_manager_root_and_step(files: dict[str, Path]) -> None:
    root = files["root"]
    doc = run_json("inspect", root)
    assert doc["kind"] == "checkpoint-root"
    assert [c["step"] for c in doc["checkpoints"]] == [100, 150, 200]
    assert doc["commit"]["step"] == 200 and doc["commit"]["committed"] is True
    assert doc["commit"]["metrics"] == {"loss": 1.0 / 200}
    assert "newest" in doc["commit"]["kept_by"]
    assert [t["name"] for t in doc["tensors"]] == ["model.w"]
    assert {"name": "extra.e", "type": "int", "value": 200} in doc["values"]
    doc = run_json("inspect", root, "--step", "100")
    assert doc["commit"]["step"] == 100 and doc["commit"]["kept_by"] == ["keep_every=100"]
    r = cli("inspect", root / "step_00000150")
    assert r.returncode == 0 and "step 150" in r.stdout and "committed" in r.stdout
    r = cli("inspect", root, "--step", "7")
    assert r.returncode == 2 and "no step 7" in r.stderr


# -- verify ----------------------------------------------------------------------------------------
def test_verify_exit_codes_clean_corrupt_unreadable(files: dict[str, Path]) -> None:
    r = run("verify", files["model"])
    assert r.returncode == 0 and r.stdout.startswith("ok")
    r = run("verify", files["flipped"])
    assert r.returncode == 1 and r.stdout.startswith("CORRUPT")
    assert "encoder.0.bias: checksum mismatch" in r.stdout  # names the bad tensor
    r = run("verify", files["truncated"])
    assert r.returncode == 2 and r.stdout.startswith("UNREADABLE")
    assert "truncated" in r.stdout


def test_verify_json(files: dict[str, Path]) -> None:
    doc = run_json("verify", files["flipped"], code=1)
    assert doc["status"] == "corrupt" and doc["format"] == "satchel"
    assert doc["checked"] == 4 and doc["checksummed"] is True
    assert [p["where"] for p in doc["problems"]] == ["encoder.0.bias"]
    doc = run_json("verify", files["truncated"], code=2)
    assert doc["status"] == "unreadable"
    doc = run_json("verify", files["model"])
    assert doc["status"] == "ok" and doc["problems"] == [] and doc["checkpoints"] is None


def test_verify_foreign_fixtures() -> None:
    r = cli("verify", needs(FIXTURES / "safetensors" / "mlp.safetensors"))
    assert r.returncode == 0 and "no checksums" in r.stdout
    doc = run_json("verify", needs(FIXTURES / "torch" / "mlp_state_dict.pt"))
    assert doc["status"] == "ok" and doc["checksummed"] is True  # zip CRC-32 per member
    doc = run_json("verify", needs(FIXTURES / "numpy" / "mlp.npz"))
    assert doc["status"] == "ok" and doc["checksummed"] is False


def test_verify_manager_root_names_the_bad_step(files: dict[str, Path], tmp_path: Path) -> None:
    doc = run_json("verify", files["root"], subprocess=True)
    assert doc["status"] == "ok"
    assert [(c["step"], c["valid"]) for c in doc["checkpoints"]] == [
        (100, True),
        (150, True),
        (200, True),
    ]
    root = tmp_path / "run"
    mgr = satchel.CheckpointManager(root)
    for step in (1, 2, 3):
        mgr.save(step, model={"w": np.full(1000, step, np.float32)})
    f = root / "step_00000002" / "model.satchel"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    (root / "step_00000003" / "manifest.json").unlink()
    r = cli("verify", root)
    assert r.returncode == 1
    assert "CORRUPT" in r.stdout
    doc = run_json("verify", root, code=1)
    by = {c["step"]: c for c in doc["checkpoints"]}
    assert by[1]["valid"] and by[1]["committed"]
    assert not by[2]["valid"] and by[2]["committed"] and "checksum" in by[2]["problem"]
    assert not by[3]["committed"] and not by[3]["valid"]
    assert {p["where"] for p in doc["problems"]} == {"step 2", "step 3"}


# -- diff ------------------------------------------------------------------------------------------
def test_diff_equal_across_formats_exits_0(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    pt = needs(FIXTURES / "torch" / "mlp_state_dict.pt")  # written by torch.save
    truth = np.load(needs(FIXTURES / "torch" / "mlp_state_dict.pt.expected.npz"))
    st = tmp_path / "model.safetensors"
    save_file({k: truth[k] for k in truth.files}, str(st))
    r = run("diff", pt, st)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "equal: 4 tensors match" in r.stdout
    doc = run_json("diff", pt, st)
    assert doc["equal"] is True and doc["counts"]["equal"] == 4
    assert doc["a"]["format"] == "torch" and doc["b"]["format"] == "safetensors"
    npz = FIXTURES / "torch" / "mlp_state_dict.pt.expected.npz"
    assert cli("diff", npz, st).returncode == 0


def test_diff_reads_slashes_as_dots() -> None:
    # npz members name nesting with "/" ("model/0.weight"); the .pt says "model.0.weight"
    pt = needs(FIXTURES / "torch" / "mlp_checkpoint.pt")
    doc = run_json("diff", pt, needs(FIXTURES / "torch" / "mlp_checkpoint.pt.expected.npz"))
    assert doc["equal"] is True and doc["counts"]["equal"] == 16
    row = doc["tensors"][0]
    assert (row["name"], row["name_a"], row["name_b"]) == (
        "model.0.weight",
        "model.0.weight",
        "model/0.weight",
    )


def test_diff_reports_every_kind_of_change_and_exits_1(files: dict[str, Path]) -> None:
    r = run("diff", files["model"], files["tuned"])
    assert r.returncode == 1
    doc = run_json("diff", files["model"], files["tuned"], code=1)
    by = {t["name"]: t for t in doc["tensors"]}
    assert by["encoder.0.weight"]["status"] == "changed"
    assert by["encoder.0.bias"]["status"] == "dtype"
    assert by["head.weight"]["status"] == "shape"
    assert by["step"]["status"] == "removed" and by["extra"]["status"] == "added"
    assert doc["counts"] == {
        "changed": 1,
        "dtype": 1,
        "shape": 1,
        "added": 1,
        "removed": 1,
        "equal": 0,
    }
    w = satchel.load(files["model"])["encoder"]["0"]["weight"].astype(np.float64)
    d = (w + np.float32(0.01)).astype(np.float32).astype(np.float64) - w
    assert math.isclose(by["encoder.0.weight"]["max_abs"], np.abs(d).max())
    assert math.isclose(by["encoder.0.weight"]["rel_l2"], np.linalg.norm(d) / np.linalg.norm(w))
    assert by["encoder.0.weight"]["mismatched"] == 2048
    for word in ("changed", "dtype", "shape", "added", "removed"):
        assert word in r.stdout


def test_diff_tolerance_and_name_matching(files: dict[str, Path], tmp_path: Path) -> None:
    a = tmp_path / "a.satchel"
    b = tmp_path / "b.satchel"
    x = np.linspace(1, 2, 100)
    satchel.save({"model": {"w": x}, "opt": {"lr": np.array(0.1)}}, a)
    satchel.save({"net.w": x + 1e-7}, b)
    assert cli("diff", a, b).returncode == 1
    r = cli("diff", a, b, "--prefix-a", "model.", "--prefix-b", "net.")
    assert r.returncode == 1 and "changed" in r.stdout  # exact by default
    r = cli("diff", a, b, "--prefix-a", "model.", "--prefix-b", "net.", "--atol", "1e-6")
    assert r.returncode == 0, r.stdout
    r = cli("diff", a, b, "--rename", "model.=net.", "--atol", "1e-6")
    assert r.returncode == 1  # opt.lr is only in A
    doc = run_json("diff", a, b, "--rename", "model.=net.", "--rtol", "1e-6", code=1)
    assert doc["counts"]["equal"] == 1 and doc["counts"]["removed"] == 1
    assert doc["match"]["rename"] == [["model.", "net."]]
    assert doc["tensors"][0]["name_a"] == "model.w" and doc["tensors"][0]["name_b"] == "net.w"
    r = cli("diff", a, b, "--rename", "nonsense")
    assert r.returncode == 2 and "OLD=NEW" in r.stderr


def test_diff_plot_writes_a_png(files: dict[str, Path], tmp_path: Path) -> None:
    import matplotlib  # noqa: F401

    png = tmp_path / "drift.png"
    r = cli("diff", files["model"], files["tuned"], "--plot", png)
    assert r.returncode == 1, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png2 = tmp_path / "layers.png"
    doc = run_json("diff", files["model"], files["tuned"], "--plot", png2, "--by-layer", code=1)
    assert doc["plot"] == str(png2) and png2.stat().st_size > 1000
    assert [g["name"] for g in doc["layers"]] == ["encoder.0"]


def test_diff_plot_without_matplotlib_says_how_to_install(
    files: dict[str, Path], tmp_path: Path
) -> None:
    blocker = tmp_path / "blocker" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(blocker.parent), str(REPO / "src")])}
    r = run("diff", files["model"], files["tuned"], "--plot", tmp_path / "x.png", env=env)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "pip install matplotlib" in r.stderr


# -- convert ---------------------------------------------------------------------------------------
def test_convert_infers_format_refuses_to_overwrite_and_reports(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "model.npz"
    r = run("convert", files["model"], out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("converted") and "(npz," in r.stdout
    assert sorted(np.load(out).files)[:2] == ["encoder/0/bias", "encoder/0/weight"]
    r = cli("convert", files["model"], out)
    assert r.returncode == 2 and "--force" in r.stderr
    doc = run_json("convert", files["model"], out, "--force", "--to", "satchel")
    assert doc["src"]["format"] == "satchel" and doc["dst"]["format"] == "satchel"
    assert doc["tensors"] == 4 and doc["dst"]["size"] == out.stat().st_size
    assert cli("diff", files["model"], out).returncode == 0  # nothing lost on the way


def test_convert_torch_fixture_to_safetensors_and_back() -> None:
    pt = needs(FIXTURES / "torch" / "mlp_state_dict.pt")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        st = Path(d) / "m.safetensors"
        assert cli("convert", pt, st).returncode == 0
        back = Path(d) / "m.pt"
        assert cli("convert", st, back).returncode == 0
        assert cli("diff", pt, back).returncode == 0


# -- ls --------------------------------------------------------------------------------------------
def test_ls_table_and_json(files: dict[str, Path]) -> None:
    r = run("ls", files["root"])
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert "retention: keep_last=2, keep_every=100" in lines[0]
    assert lines[1].split() == ["step", "time", "size", "metrics", "kept", "by", "status"]
    assert "loss=0.005" in r.stdout and "valid" in r.stdout and "newest" in r.stdout
    doc = run_json("ls", files["root"])
    assert doc["latest_valid"] == 200 and doc["verified"] is True
    steps = {c["step"]: c for c in doc["checkpoints"]}
    assert steps[100]["kept_by"] == ["keep_every=100"]
    assert steps[150]["kept_by"] == ["keep_last=2"]
    assert steps[200]["kept_by"] == ["keep_last=2", "keep_every=100", "newest"]
    assert steps[200]["metrics"] == {"loss": 0.005}
    assert steps[200]["items"]["model"]["file"] == "model.satchel"
    assert all(c["valid"] for c in doc["checkpoints"])


def test_ls_says_why_a_checkpoint_is_invalid(tmp_path: Path) -> None:
    root = tmp_path / "run"
    mgr = satchel.CheckpointManager(root)
    mgr.save(1, model={"w": np.zeros(10)})
    mgr.save(2, model={"w": np.ones(10)})
    (root / "step_00000002" / "model.satchel").unlink()
    r = cli("ls", root)
    assert r.returncode == 0
    assert "invalid: item 'model': file model.satchel is missing" in r.stdout
    doc = run_json("ls", root)
    assert doc["latest_valid"] == 1
    assert doc["checkpoints"][1]["valid"] is False
    doc = run_json("ls", root, "--no-verify")
    assert doc["checkpoints"][1]["valid"] is None and doc["verified"] is False


def test_ls_missing_root_is_an_error(tmp_path: Path) -> None:
    r = cli("ls", tmp_path / "nope")
    assert r.returncode == 2 and r.stderr.startswith("satchel: error:")


# -- the numerics, in process ----------------------------------------------------------------------
def test_stats_by_chunks_equal_numpy_on_views() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((300, 70)) * 5 + 2
    for arr in (a, a.T, a[::3, ::-2], a.astype(np.float16)):
        s = tensor_stats(arr)
        assert s is not None
        ref = arr.astype(np.float64)
        assert math.isclose(s.mean or 0, ref.mean(), rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(s.std or 0, ref.std(), rel_tol=1e-12)
        assert (s.min, s.max) == (ref.min(), ref.max())
    from satchel._cli import _stats

    small = list(_stats.chunks(a.T, 1000))
    assert all(c.size <= 1000 for c in small) and sum(c.size for c in small) == a.size


def test_compare_aligns_chunks_of_a_view_and_a_copy() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((64, 48))
    b = np.ascontiguousarray(a.T).copy()
    b[5, 7] += 1.0
    c = compare(a.T, b, atol=0, rtol=0)
    assert c.mismatched == 1 and c.max_abs == pytest.approx(1.0)
    assert c.rel_l2 == pytest.approx(1.0 / np.linalg.norm(a))
    nan = np.array([np.nan, np.inf, 1.0])
    assert compare(nan, nan.copy(), atol=0, rtol=0).equal
    assert compare(nan, np.array([np.nan, -np.inf, 1.0]), atol=0, rtol=0).mismatched == 1


def test_layer_names() -> None:
    assert layer_of("model.layers.12.mlp.down.weight") == "model.layers.12"
    assert layer_of("0.weight") == "0"
    assert layer_of("head.weight") == "head"
    assert layer_of("w") == "w"
