"""``satchel inspect PATH``: format, structure tree, tensors, dtype totals, metadata, commit."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any

import satchel

from ._console import Console
from ._render import (
    Cell,
    HelpFormatter,
    build_tree,
    fmt_count,
    fmt_float,
    fmt_metrics,
    fmt_shape,
    fmt_time,
    fmt_value,
    human_bytes,
    metrics_json,
    render_fields,
    render_table,
    render_tree,
)
from ._source import Entry, Source
from ._stats import Stats, tensor_stats
from ._storage import storage_options

__all__ = ["add_parser", "run"]

EXAMPLES = """\
examples:
  satchel inspect model.safetensors
  satchel inspect checkpoint.pt --filter 'model.*' --stats
  satchel inspect runs/exp1                  # newest committed checkpoint of a manager root
  satchel inspect runs/exp1 --step 1000 --json
"""


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "inspect",
        parents=[common],
        help="show what a file, checkpoint or checkpoint root holds",
        description="Show the format, a tree of the nested structure, a table of tensors (name, "
        "dtype, shape, elements, size), totals per dtype, metadata and commit state. Reads "
        "headers only, unless --stats asks for values.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    p.add_argument("path", metavar="PATH", help="a file or folder in any format satchel reads")
    p.add_argument(
        "--filter",
        metavar="GLOB",
        action="append",
        default=[],
        help="only names matching GLOB (fnmatch, case-sensitive; repeat to add more)",
    )
    p.add_argument(
        "--stats",
        action="store_true",
        help="add min/max/mean/std and NaN/Inf counts per tensor (reads the data, a tensor "
        "at a time)",
    )
    p.add_argument("--step", type=int, metavar="N", help="for a checkpoint root: which step")
    p.add_argument("--depth", type=int, metavar="N", help="fold the tree below N levels")
    p.add_argument("--no-tree", action="store_true", help="leave out the structure tree")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, con: Console) -> int:
    with Source(args.path, step=args.step, storage_options=storage_options(args)) as src:
        entries = [e for e in src.entries() if _selected(e.name, args.filter)]
        tensors = [e for e in entries if e.info is not None]
        stats = _stats(src, tensors, con) if args.stats else {}
        if con.json_mode:
            con.emit("inspect", _json(src, entries, stats, args))
        else:
            _text(src, entries, stats, args, con)
    return 0


def _selected(name: str, globs: Sequence[str]) -> bool:
    return not globs or any(fnmatchcase(name, g) for g in globs)


def _stats(src: Source, tensors: list[Entry], con: Console) -> dict[str, Stats | None]:
    meter = con.meter(sum(e.info.nbytes for e in tensors if e.info is not None), "statistics")
    out = {e.name: tensor_stats(src.array(e.name), meter.add) for e in tensors}
    meter.finish()
    return out


def _totals(tensors: list[Entry]) -> dict[str, Any]:
    by: dict[str, dict[str, int]] = {}
    for e in tensors:
        assert e.info is not None
        row = by.setdefault(e.info.dtype, {"tensors": 0, "elements": 0, "nbytes": 0})
        row["tensors"] += 1
        row["elements"] += _elements(e.info)
        row["nbytes"] += e.info.nbytes
    return {
        "tensors": len(tensors),
        "elements": sum(r["elements"] for r in by.values()),
        "nbytes": sum(r["nbytes"] for r in by.values()),
        "by_dtype": by,
    }


def _elements(info: satchel.TensorInfo) -> int:
    n = 1
    for d in info.shape:
        n *= d
    return n


# -- JSON ------------------------------------------------------------------------------------------
def _json(
    src: Source, entries: list[Entry], stats: dict[str, Stats | None], args: argparse.Namespace
) -> dict[str, Any]:
    tensors = []
    for e in entries:
        if e.info is None:
            continue
        row: dict[str, Any] = {
            "name": e.name,
            "dtype": e.info.dtype,
            "shape": list(e.info.shape),
            "elements": _elements(e.info),
            "nbytes": e.info.nbytes,
        }
        if args.stats:
            s = stats.get(e.name)
            row["stats"] = s.as_json() if s is not None else None
        tensors.append(row)
    values = [
        {"name": e.name, "type": type(e.value).__name__, "value": _jsonable(e.value)}
        for e in entries
        if e.info is None
    ]
    return {
        "path": src.where,
        "kind": src.kind,
        "format": src.format,
        "size": src.size(),
        "checksummed": src.checksummed,
        "module_class": src.module_class,
        "metadata": src.metadata,
        "filter": list(args.filter),
        "tensors": tensors,
        "values": values,
        "totals": _totals([e for e in entries if e.info is not None]),
        "commit": _commit_json(src) if src.commit is not None else None,
        "checkpoints": (
            [_checkpoint_json(i, src) for i in src.checkpoints]
            if src.checkpoints is not None
            else None
        ),
    }


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    return repr(v)


def _commit_json(src: Source) -> dict[str, Any]:
    info = src.commit
    assert info is not None
    out = _checkpoint_json(info, src)
    rec = info.record
    out["items"] = (
        {n: {"file": r.file, "size": r.size} for n, r in rec.items.items()} if rec else {}
    )
    out["versions"] = dict(rec.versions) if rec else {}
    out["retention"] = list(rec.retention) if rec else []
    return out


def _checkpoint_json(info: satchel.CheckpointInfo, src: Source) -> dict[str, Any]:
    rec = info.record
    return {
        "step": info.step,
        "path": str(info.path),
        "committed": rec is not None,
        "problem": info.problem,
        "time": rec.time if rec else None,
        "size": sum(r.size for r in rec.items.values()) if rec else None,
        "metrics": metrics_json(rec.metrics) if rec else {},
        "kept_by": src.kept_by.get(info.step, []),
    }


# -- text ------------------------------------------------------------------------------------------
def _text(
    src: Source,
    entries: list[Entry],
    stats: dict[str, Stats | None],
    args: argparse.Namespace,
    con: Console,
) -> None:
    st = con.style
    tensors = [e for e in entries if e.info is not None]
    totals = _totals(tensors)
    size = src.size()
    where = "in object storage" if size is None else f"{human_bytes(size)} on disk"
    con.line(f"{st(src.where, 'bold')}  {_kind_text(src)}, {where}")
    header = [("checksums", _checksum_text(src))]
    if src.module_class:
        header.append(("module", src.module_class))
    meta = src.metadata
    header.append(("metadata", ", ".join(f"{k}={v}" for k, v in meta.items()) or "none"))
    if args.filter:
        header.append(("filter", f"{' '.join(args.filter)} ({len(tensors)} tensors match)"))
    con.lines(render_fields(header, st))
    if src.checkpoints is not None:
        _checkpoints_text(src, con)
    if src.commit is not None:
        _commit_text(src, con)
    if not src.parts:
        return
    if not args.no_tree:
        con.line()
        con.line(st("structure", "bold"))
        shown = src.commit.path if src.commit is not None else src.path
        root_name = src.url.rstrip("/").rpartition("/")[2] if src.url else shown.name or str(shown)
        tree = build_tree(
            root_name,
            [
                (
                    e.name,
                    f"{e.info.dtype} {fmt_shape(e.info.shape)}" if e.info else fmt_value(e.value),
                    e.info.nbytes if e.info else None,
                )
                for e in entries
            ],
        )
        con.lines(render_tree(tree, st, depth=args.depth))
    con.line()
    con.line(st("tensors", "bold"))
    if not tensors:
        con.line("  (none)")
        return
    headers = ["name", "dtype", "shape", "elements", "size"]
    right = [3, 4]
    if args.stats:
        headers += ["min", "max", "mean", "std", "nan", "inf"]
        right += [5, 6, 7, 8, 9, 10]
    rows: list[list[Cell]] = []
    for e in tensors:
        assert e.info is not None
        row: list[Cell] = [
            e.name,
            e.info.dtype,
            fmt_shape(e.info.shape),
            fmt_count(_elements(e.info)),
            human_bytes(e.info.nbytes),
        ]
        if args.stats:
            row += _stats_cells(stats.get(e.name))
        rows.append(row)
    con.lines(render_table(headers, rows, st, right=right, indent="  "))
    con.line()
    con.line(st("by dtype", "bold"))
    dtype_rows: list[list[Cell]] = [
        [d, fmt_count(r["tensors"]), fmt_count(r["elements"]), human_bytes(r["nbytes"])]
        for d, r in sorted(totals["by_dtype"].items(), key=lambda kv: -kv[1]["nbytes"])
    ]
    dtype_rows.append(
        [
            ("total", ("bold",)),
            (fmt_count(totals["tensors"]), ("bold",)),
            (fmt_count(totals["elements"]), ("bold",)),
            (human_bytes(totals["nbytes"]), ("bold",)),
        ]
    )
    con.lines(
        render_table(
            ["dtype", "tensors", "elements", "size"], dtype_rows, st, right=[1, 2, 3], indent="  "
        )
    )


def _stats_cells(s: Stats | None) -> list[Cell]:
    if s is None:
        return ["-"] * 6
    nan = (fmt_count(s.nan), ("red",)) if s.nan else "0"
    inf = (fmt_count(s.inf), ("red",)) if s.inf else "0"
    return [fmt_float(s.min), fmt_float(s.max), fmt_float(s.mean), fmt_float(s.std), nan, inf]


def _kind_text(src: Source) -> str:
    if src.kind == "checkpoint-root":
        n = len(src.checkpoints or [])
        return f"checkpoint root, {n} step folder{'s' if n != 1 else ''}"
    if src.kind == "checkpoint":
        return f"checkpoint, {len(src.parts)} item{'s' if len(src.parts) != 1 else ''}"
    if src.url is not None:
        return f"{src.format} at a URL"
    if src.path.is_file():
        return f"{src.format} file"
    return f"{src.format} folder" if src.path.is_dir() else f"{src.format} checkpoint prefix"


def _checksum_text(src: Source) -> str:
    if src.kind != "file":
        return "xxh3-64 per file in the commit record, per tensor in each file"
    kind = _CHECKSUMS.get(src.format, "xxh3-64 per tensor")
    if src.checksummed:
        return f"{kind} (satchel verify checks them)"
    return f"none ({src.format} files carry none)"


# What each checksummed format checks; satchel's own files (and shards, pieces) use xxh3-64.
_CHECKSUMS = {
    "tensorflow": "crc32c per tensor",
    "torch": "CRC-32 per zip member",
    "dcp": "CRC-32 per zip member of each item",
}


def _checkpoints_text(src: Source, con: Console) -> None:
    st = con.style
    con.line()
    con.line(st("checkpoints", "bold"))
    infos = src.checkpoints or []
    if not infos:
        con.line("  (none)")
        return
    rows: list[list[Cell]] = []
    for i in infos:
        rec = i.record
        state: Cell = ("committed", ("green",)) if rec else ("not committed", ("red",))
        rows.append(
            [
                str(i.step),
                fmt_time(rec.time) if rec else "-",
                human_bytes(sum(r.size for r in rec.items.values())) if rec else "-",
                fmt_metrics(rec.metrics) if rec else "-",
                state,
                ", ".join(src.kept_by.get(i.step, [])),
            ]
        )
    headers = ["step", "time", "size", "metrics", "state", "kept by"]
    con.lines(render_table(headers, rows, st, right=[0, 2], indent="  "))
    if src.commit is None:
        con.line()
        con.line("  no committed checkpoint to show")


def _commit_text(src: Source, con: Console) -> None:
    st = con.style
    info = src.commit
    assert info is not None
    rec = info.record
    con.line()
    con.line(st(f"step {info.step}", "bold"))
    if rec is None:
        con.line(f"  {st('not committed', 'red')}: {info.problem}")
        return
    kept = src.kept_by.get(info.step, [])
    fields = [
        ("state", st("committed", "green") + " (satchel verify checks every file)"),
        ("time", fmt_time(rec.time)),
        ("metrics", fmt_metrics(rec.metrics) or "none"),
        ("items", ", ".join(f"{n} ({human_bytes(r.size)})" for n, r in rec.items.items())),
        ("versions", ", ".join(f"{k} {v}" for k, v in rec.versions.items())),
        ("kept by", ", ".join(kept) or "no rule (deleted at the next save)"),
    ]
    con.lines(render_fields(fields, st, indent="  "))
