"""The public surface: ``__all__``, the error tree, and no ML framework imported by accident."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import satchel

SRC = str(Path(satchel.__file__).resolve().parents[1])
FRAMEWORKS = ("torch", "tensorflow", "jax", "mxnet")

ERRORS = {
    "FormatError": ValueError,
    "IntegrityError": ValueError,
    "UnsafeContentError": ValueError,
    "UnsupportedObjectError": TypeError,
    "FrameworkNotAvailableError": ImportError,
    "SatchelFileNotFoundError": FileNotFoundError,
    "MissingKeyError": KeyError,
    "UsageError": ValueError,
}


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_all_is_sorted_and_lists_exactly_the_public_names() -> None:
    assert satchel.__all__ == sorted(satchel.__all__)
    assert len(set(satchel.__all__)) == len(satchel.__all__)
    defined = {
        name
        for name, value in vars(satchel).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert set(satchel.__all__) - {"__version__"} == defined
    for name in satchel.__all__:
        assert hasattr(satchel, name), name
    assert isinstance(satchel.__version__, str)


def test_star_import_gives_the_public_names() -> None:
    scope: dict[str, object] = {}
    exec("from satchel import *", scope)
    assert set(scope) - {"__builtins__"} == set(satchel.__all__)


def test_core_functions_are_public_and_keyword_only() -> None:
    for fn in (satchel.save, satchel.load, satchel.open):
        assert fn.__doc__, fn
    save = inspect.signature(satchel.save).parameters
    assert list(save)[:2] == ["obj", "path"]
    assert save["metadata"].kind is inspect.Parameter.KEYWORD_ONLY
    load = inspect.signature(satchel.load).parameters
    for name, default in {
        "framework": "auto",
        "device": None,
        "dtype": None,
        "mmap": True,
        "verify": True,
    }.items():
        assert load[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert load[name].default == default, name


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_classes_subclass_satchel_error_and_their_builtin(name: str) -> None:
    cls = getattr(satchel, name)
    assert name in satchel.__all__
    assert issubclass(cls, satchel.SatchelError)
    assert issubclass(cls, ERRORS[name])
    assert issubclass(satchel.SatchelError, Exception)
    err = cls("some message")
    assert isinstance(err, ERRORS[name])
    assert "some message" in str(err)


def test_integrity_error_is_a_format_error() -> None:
    assert issubclass(satchel.IntegrityError, satchel.FormatError)


def test_every_public_error_is_a_satchel_error_and_a_builtin() -> None:
    errors = [
        getattr(satchel, name)
        for name in satchel.__all__
        if inspect.isclass(getattr(satchel, name))
        and issubclass(getattr(satchel, name), Exception)
        and not issubclass(getattr(satchel, name), Warning)
    ]
    assert set(ERRORS) | {"SatchelError"} <= {cls.__name__ for cls in errors}
    for cls in errors:
        assert issubclass(cls, satchel.SatchelError), cls
        if cls is not satchel.SatchelError:
            builtins = [b for b in cls.__mro__ if b.__module__ == "builtins"]
            assert builtins[0] not in (Exception, BaseException), (cls, builtins)


def test_missing_key_error_reads_as_a_sentence() -> None:
    err = satchel.MissingKeyError("f: no array named 'x'")
    assert str(err) == "f: no array named 'x'"  # not KeyError's repr-quoted form


def test_import_satchel_imports_no_ml_framework(tmp_path: Path) -> None:
    code = f"""
        import sys
        import satchel
        loaded = {set(FRAMEWORKS)!r} & set(sys.modules)
        assert not loaded, loaded
    """
    proc = run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_numpy_save_and_load_import_no_ml_framework(tmp_path: Path) -> None:
    code = f"""
        import sys
        import numpy as np
        import satchel
        obj = {{"w": np.arange(6.0).reshape(2, 3), "v": [np.float32(1), b"x", 3], "n": None}}
        satchel.save(obj, "np.satchel", metadata={{"k": "v"}})
        got = satchel.load("np.satchel")
        assert got["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
        with satchel.open("np.satchel") as ck:
            ck.keys(); ck.info("w"); ck["w"]; ck.load()
        satchel.load("np.satchel", mmap=False, verify=False, dtype="float16")
        loaded = {set(FRAMEWORKS)!r} & set(sys.modules)
        assert not loaded, loaded
    """
    proc = run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_torch_file_without_torch_suggests_numpy(tmp_path: Path) -> None:
    import torch

    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    p = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))
    torch_file = tmp_path / "torch.satchel"
    satchel.save({"w": w, "wT": w.T, "p": p, "n": 5}, torch_file)
    code = """
        import sys
        sys.modules["torch"] = None  # torch cannot be imported in this process
        import numpy as np
        import satchel
        try:
            satchel.load("torch.satchel")
        except satchel.FrameworkNotAvailableError as e:
            assert isinstance(e, ImportError) and isinstance(e, satchel.SatchelError)
            assert "framework='numpy'" in str(e), str(e)
            assert "torch.satchel" in str(e), str(e)
        else:
            raise AssertionError("loading torch leaves without torch did not raise")
        with satchel.open("torch.satchel") as ck:
            assert ck.info("w").framework == "torch"
            try:
                ck["w"]
            except satchel.FrameworkNotAvailableError:
                pass
            else:
                raise AssertionError("lazy access without torch did not raise")
        got = satchel.load("torch.satchel", framework="numpy")
        assert type(got["w"]) is np.ndarray and got["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
        assert got["wT"].tolist() == [[0, 3], [1, 4], [2, 5]]
        assert str(got["p"].dtype) == "bfloat16" and got["p"].astype(np.float32).tolist() == [1, 1]
        assert got["n"] == 5
        assert sys.modules["torch"] is None
    """
    proc = run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
