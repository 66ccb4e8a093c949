"""On a terminal the command draws colours and progress bars; in a pipe it draws neither.

The command runs in a pseudo-terminal (``os.openpty``), so its stdout and stderr are TTYs. A
bar is drawn on a terminal from the first step of a long operation and its final state stays
as one line on stderr; that is why a small file is enough to see it here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import satchel

# POSIX only: pseudo-terminals (this project runs on Linux)

REPO = Path(__file__).resolve().parents[1]
ESC = "\x1b["


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env.update(PYTHONPATH=str(REPO / "src"), TERM="xterm-256color", COLUMNS="120")
    return env


def in_terminal(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``python -m satchel ARGS`` with a pseudo-terminal as stdin, stdout and stderr."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "satchel", *map(str, args)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**_env(), **(env or {})},
            close_fds=True,
        )
    finally:
        os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal (Linux)
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    code = proc.wait(timeout=120)
    return code, b"".join(chunks).decode("utf-8", "replace")


def in_pipe(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "satchel", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pty") / "big.satchel"
    rng = np.random.default_rng(0)
    satchel.save(
        {f"layer{i}": rng.standard_normal(250_000).astype(np.float32) for i in range(8)}, path
    )
    return path


def test_terminal_gets_colours_and_a_progress_bar(big: Path) -> None:
    code, text = in_terminal("verify", big)
    assert code == 0
    assert f"{ESC}1;32mok{ESC}0m" in text  # the green, bold verdict
    assert f"verifying {big.name} [" in text and "100.0%" in text  # the bar, on stderr

    code, text = in_terminal("inspect", big, "--stats")
    assert code == 0
    assert ESC in text and "statistics [" in text


def test_no_progress_flag_keeps_colours_but_drops_the_bar(big: Path) -> None:
    code, text = in_terminal("verify", big, "--no-progress")
    assert code == 0 and ESC in text
    assert "verifying" not in text


def test_a_pipe_gets_neither(big: Path) -> None:
    r = in_pipe("verify", big)
    assert r.returncode == 0
    assert ESC not in r.stdout + r.stderr
    assert r.stderr == ""  # no bar
    assert r.stdout.startswith("ok")


def test_no_color_in_a_terminal_keeps_the_bar_but_drops_colours(big: Path) -> None:
    code, text = in_terminal("verify", big, env={"NO_COLOR": "1"})
    assert code == 0
    assert ESC not in text and f"verifying {big.name} [" in text
