"""``satchel verify PATH``: every checksum and rule; exit 0 clean, 1 corrupt, 2 unreadable.

A manager root is checked one checkpoint at a time, so the listing says which steps are
committed and which of those are valid (every file present, with its recorded size and xxh3-64).
"""

from __future__ import annotations

import argparse
from typing import Any, Literal

import satchel

from ._console import Console
from ._render import Cell, HelpFormatter, human_bytes, render_table
from ._storage import storage_options

__all__ = ["EXIT", "add_parser", "run"]

Status = Literal["ok", "corrupt", "unreadable"]

EXIT = {"ok": 0, "corrupt": 1, "unreadable": 2}

EXAMPLES = """\
examples:
  satchel verify model.safetensors
  satchel verify runs/exp1            # every checkpoint of a manager root
  satchel verify old.pt --json

exit status: 0 clean, 1 corrupt (readable, some data bad), 2 unreadable or error
"""


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "verify",
        parents=[common],
        help="check every checksum and structural rule (exit 0 clean, 1 corrupt, 2 unreadable)",
        description="Check a file, checkpoint or checkpoint root completely and name every bad "
        "tensor or file. satchel files: header, manifest and each tensor's xxh3-64. Plain "
        "safetensors: the structure (no checksums exist). Other formats: a full read with "
        "their own checks (TensorFlow crc32c, zip CRCs).",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "path",
        metavar="PATH",
        help="a file, checkpoint folder or checkpoint root, or a URL (s3://bucket/key)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, con: Console) -> int:
    options = storage_options(args)
    report = satchel.verify(args.path, progress=con.api_progress(), storage_options=options)
    # A root's report lists its step folders: one row each, committed or not.
    steps = list(report.checkpoints) if report.format == "checkpoint-root" else None
    if con.json_mode:
        con.emit("verify", _json(report, steps))
    else:
        _text(report, steps, con)
    return EXIT[report.status]


def _status(info: satchel.CheckpointInfo) -> Status:
    if info.record is None:  # no commit record: nothing of it may be loaded (SPEC 8.4)
        return "unreadable"
    return "corrupt" if info.problem else "ok"


def _size(info: satchel.CheckpointInfo) -> int:
    return sum(r.size for r in info.record.items.values()) if info.record else 0


def _json(
    report: satchel.VerifyReport,
    steps: list[satchel.CheckpointInfo] | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "path": report.path,
        "format": report.format,
        "status": report.status,
        "checked": report.checked,
        "checksummed": report.checksummed,
        "problems": [{"where": p.where, "message": p.message} for p in report.problems],
        "warnings": [{"where": w.where, "message": w.message} for w in report.warnings],
        "checkpoints": None,
    }
    if steps is not None:
        out["checkpoints"] = [
            {
                "step": info.step,
                "path": str(info.path),
                "committed": info.record is not None,
                "valid": info.problem is None,
                "status": _status(info),
                "problem": info.problem,
            }
            for info in steps
        ]
    return out


_BADGE = {"ok": ("ok", "green"), "corrupt": ("CORRUPT", "red"), "unreadable": ("UNREADABLE", "red")}


def _text(
    report: satchel.VerifyReport,
    steps: list[satchel.CheckpointInfo] | None,
    con: Console,
) -> None:
    st = con.style
    word, colour = _BADGE[report.status]
    con.line(f"{st(word, 'bold', colour)}  {report.path}  {st(_summary(report), 'dim')}")
    for w in report.warnings:
        con.line(f"  {st('warning', 'bold', 'yellow')}: {w.where}: {w.message}")
    if steps is not None:
        rows: list[list[Cell]] = []
        for info in steps:
            state: Cell = ("valid", ("green",)) if info.valid else (_status(info), ("red",))
            why = info.problem or ""
            rows.append(
                [
                    str(info.step),
                    "yes" if info.record is not None else ("no", ("red",)),
                    state,
                    human_bytes(_size(info)) if info.record else "-",
                    why,
                ]
            )
        if rows:
            con.lines(
                render_table(
                    ["step", "committed", "status", "size", "problem"],
                    rows,
                    st,
                    right=[0, 3],
                    indent="  ",
                )
            )
        return
    for p in report.problems:
        # Messages about a whole file already start with its path; do not say it twice.
        where = "" if p.message.startswith(p.where) else f"{st(p.where, 'bold')}: "
        con.line(f"  {where}{p.message}")


def _summary(report: satchel.VerifyReport) -> str:
    if report.format == "checkpoint-root":
        n = report.checked
        return f"checkpoint root, {n} checkpoint{'s' if n != 1 else ''} checked"
    if report.format == "checkpoint":
        return f"checkpoint, {report.checked} files checked against the commit record"
    if report.status == "unreadable":
        return (
            "cannot be read" if report.format == "unknown" else f"{report.format}, cannot be read"
        )
    n = report.checked
    what = f"{report.format}, {n} tensor{'s' if n != 1 else ''}"
    if report.checksummed:
        bad = len(report.problems)
        return f"{what} checked" + (f", {bad} bad" if bad else "")
    return f"{what} read; this format has no checksums, only its structure was checked"
