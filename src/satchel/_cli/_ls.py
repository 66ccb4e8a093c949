"""``satchel ls ROOT``: a manager's checkpoints with time, size, metrics, validity and retention."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import satchel

from .._remote.url import is_url
from ._console import Console
from ._render import (
    Cell,
    HelpFormatter,
    fmt_metrics,
    fmt_time,
    human_bytes,
    metrics_json,
    render_table,
)
from ._storage import storage_options

__all__ = ["add_parser", "run"]

EXAMPLES = """\
examples:
  satchel ls runs/exp1
  satchel ls runs/exp1 --no-verify     # commit records only: fast, no checksums read
  satchel ls runs/exp1 --json
"""


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "ls",
        parents=[common],
        help="list a CheckpointManager root's checkpoints",
        description="List every step folder of a CheckpointManager root: step, time, size, "
        "metrics, whether it is valid (committed, every file with its recorded size and "
        "xxh3-64) or why not, and which retention rule keeps it.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    p.add_argument("root", metavar="ROOT", help="the folder given to CheckpointManager")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="trust the commit records: do not read the files to check their checksums",
    )
    p.set_defaults(run=run)


def _size(info: satchel.CheckpointInfo) -> int | None:
    return info.record.size if info.record else None  # pool files included (SPEC 8.18)


def run(args: argparse.Namespace, con: Console) -> int:
    root: Path | str
    view: Any
    if is_url(args.root):  # SPEC 11.9: a root in object storage (a manager only reads here)
        root = args.root
        view = satchel.CheckpointManager(args.root, storage_options=storage_options(args))
    else:
        root = Path(args.root)
        view = satchel.CheckpointRoot(root)
    infos = view.checkpoints(verify=not args.no_verify, progress=con.api_progress())
    kept = view.kept_by()
    problems: dict[int, str | None] = {i.step: i.problem for i in infos}
    valid = [i.step for i in infos if i.record is not None and problems[i.step] is None]
    latest = valid[-1] if valid else None
    policies = list(view.retention)
    if con.json_mode:
        con.emit(
            "ls",
            {
                "root": str(root),
                "verified": not args.no_verify,
                "policies": policies,
                "latest_valid": latest if not args.no_verify else None,
                "checkpoints": [_json(i, problems[i.step], kept, args.no_verify) for i in infos],
            },
        )
        return 0
    st = con.style
    n = len(infos)
    head = f"{n} checkpoint{'s' if n != 1 else ''}"
    if policies:
        head += f"; retention: {', '.join(policies)}"
    con.line(f"{st(str(root), 'bold')}  {st(head, 'dim')}")
    if not infos:
        return 0
    rows: list[list[Cell]] = []
    for i in infos:
        rec = i.record
        problem = problems[i.step]
        state: Cell
        if rec is None or problem is not None:
            state = (f"invalid: {problem}", ("red",))
        elif args.no_verify:
            state = ("committed", ("green",))
        elif i.step == latest:
            state = ("valid (restore picks this)", ("green", "bold"))
        else:
            state = ("valid", ("green",))
        rows.append(
            [
                str(i.step),
                fmt_time(rec.time) if rec else "-",
                human_bytes(_size(i) or 0) if rec else "-",
                (fmt_metrics(rec.metrics) if rec else "") or "-",
                ", ".join(kept.get(i.step, [])) or "-",
                state,
            ]
        )
    headers = ["step", "time", "size", "metrics", "kept by", "status"]
    con.lines(render_table(headers, rows, st, right=[0, 2]))
    return 0


def _json(
    info: satchel.CheckpointInfo,
    problem: str | None,
    kept: dict[int, list[str]],
    unverified: bool,
) -> dict[str, Any]:
    rec = info.record
    return {
        "step": info.step,
        "path": str(info.path),
        "committed": rec is not None,
        "valid": None if unverified and rec is not None else (rec is not None and problem is None),
        "problem": problem,
        "time": rec.time if rec else None,
        "size": _size(info),
        "metrics": metrics_json(rec.metrics) if rec else {},
        "kept_by": kept.get(info.step, []),
        "items": (
            {n: {"file": r.file, "size": r.size} for n, r in rec.items.items()} if rec else {}
        ),
    }
