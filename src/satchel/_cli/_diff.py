"""``satchel diff A B``: added, removed, reshaped/retyped and changed tensors, across formats.

Names are matched exactly, with ``/`` read as ``.``, after ``--prefix-a``/``--prefix-b`` (keep
only names under that prefix and strip it) and ``--rename OLD=NEW`` (rewrite A's names that
start with OLD). Values
are read one tensor at a time and compared in float64 (see ``_compare``). Exit 0 when equal,
1 when different, like ``diff``.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any, Literal

import satchel

from .._remote.url import is_url
from ..errors import UsageError
from ._compare import TINY, Comparison, Norm, compare
from ._console import Console
from ._plot import check_target, plot_changes
from ._render import Cell, HelpFormatter, fmt_count, fmt_float, fmt_shape, render_table
from ._source import Source
from ._storage import storage_options

__all__ = ["Layer", "Result", "Row", "add_parser", "layer_of", "layers", "run"]

Status = Literal["equal", "changed", "dtype", "shape", "added", "removed"]
_ORDER: tuple[Status, ...] = ("changed", "dtype", "shape", "added", "removed", "equal")
_COLOUR = {
    "changed": "yellow",
    "dtype": "magenta",
    "shape": "magenta",
    "added": "green",
    "removed": "red",
    "equal": "dim",
}
_LAST_PART = re.compile(r"[./][^./]*$")
_NUMBERED = re.compile(r"^(.*?(?:^|[./])\d+)(?:[./]|$)")

EXAMPLES = """\
examples:
  satchel diff base.pt tuned.safetensors
  satchel diff base.pt tuned.safetensors --plot drift.png --by-layer
  satchel diff ckpt.pt model.safetensors --prefix-a model.       # compare ckpt['model'] only
  satchel diff mx.params torch.pt --rename 1.=2. --atol 1e-6 --json

exit status: 0 equal, 1 different, 2 error
"""


@dataclass(frozen=True)
class Row:
    """One name: where it is (A, B or both), and how the two tensors compare."""

    name: str
    status: Status
    name_a: str | None
    name_b: str | None
    a: satchel.TensorInfo | None
    b: satchel.TensorInfo | None
    cmp: Comparison | None


@dataclass(frozen=True)
class Result:
    """Everything one diff found, for the text and JSON renderers."""

    a: Source
    b: Source
    rows: list[Row]
    counts: dict[Status, int]
    layers: list[Layer] | None
    plot: str | None

    @property
    def equal(self) -> bool:
        return self.counts["equal"] == len(self.rows)


@dataclass(frozen=True)
class Layer:
    """Tensors grouped by :func:`layer_of` their name, with their combined relative change."""

    name: str
    tensors: int
    rel_l2: float


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "diff",
        parents=[common],
        help="compare the tensors of two files (any formats); exit 1 when they differ",
        description="Compare A with B tensor by tensor: names only in B are 'added', only in A "
        "'removed'; shared names are 'shape' or 'dtype' changed, 'changed' (some element "
        "outside the tolerance) or 'equal'. Max |a-b| and relative L2 change "
        "||a-b||/||a|| are reported per tensor.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    p.add_argument("a", metavar="A", help="the reference (before)")
    p.add_argument("b", metavar="B", help="the one compared with it (after)")
    p.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (default 0: exact)")
    p.add_argument(
        "--rtol", type=float, default=0.0, help="relative tolerance, times |b| (default 0)"
    )
    p.add_argument("--prefix-a", default="", metavar="P", help="only A's names under P, P removed")
    p.add_argument("--prefix-b", default="", metavar="P", help="only B's names under P, P removed")
    p.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="A's names starting with OLD start with NEW instead (repeatable; first match wins)",
    )
    p.add_argument("--all", action="store_true", help="list equal tensors too")
    p.add_argument("--plot", metavar="PNG", help="draw the relative change per tensor to PNG")
    p.add_argument(
        "--by-layer",
        action="store_true",
        help="one bar (and row) per layer: the name up to its first numeric part (blocks.3), "
        "else without its last part",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, con: Console) -> int:
    if args.atol < 0 or args.rtol < 0:
        raise UsageError("--atol and --rtol must be >= 0")
    rules = [_rule(r) for r in args.rename]
    if args.plot:
        check_target(args.plot)
    opts = storage_options(args)  # for whichever of A and B is a URL
    a_opts = opts if is_url(args.a) else None
    b_opts = opts if is_url(args.b) else None
    with (
        Source(args.a, storage_options=a_opts) as sa,
        Source(args.b, storage_options=b_opts) as sb,
    ):
        names_a = _mapped(sa.names(), args.prefix_a, rules)
        names_b = _mapped(sb.names(), args.prefix_b, [])
        rows = _rows(sa, sb, names_a, names_b, atol=args.atol, rtol=args.rtol, con=con)
        counts: dict[Status, int] = {s: sum(r.status == s for r in rows) for s in _ORDER}
        grouped = layers(rows) if args.by_layer else None
        if args.plot:
            bars = (
                [(g.name, g.rel_l2) for g in grouped]
                if grouped is not None
                else [(r.name, r.cmp.rel_l2) for r in rows if r.cmp and r.cmp.rel_l2 is not None]
            )
            plot_changes(
                bars,
                args.plot,
                title=f"{sa.path.name} → {sb.path.name}",
                by_layer=args.by_layer,
                skipped=sum(r.cmp is None for r in rows),
            )
        result = Result(sa, sb, rows, counts, grouped, args.plot)
        if con.json_mode:
            con.emit("diff", _json(result, args, rules))
        else:
            _text(result, args, con)
    return 0 if result.equal else 1


def _rule(text: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old:
        raise UsageError(f"--rename {text!r}: expected OLD=NEW, e.g. --rename model.=")
    return old, new


def _mapped(names: list[str], prefix: str, rules: list[tuple[str, str]]) -> dict[str, str]:
    """Matching name -> the file's own name.

    ``/`` counts as ``.`` (npz members and TensorFlow names use it for nesting), then the prefix
    is stripped and the first matching rename applied. Should two names of one file meet, the
    later keeps its own spelling.
    """
    out: dict[str, str] = {}
    for n in names:
        m = n.replace("/", ".")
        if not m.startswith(prefix):
            continue
        m = m[len(prefix) :]
        for old, new in rules:
            if m.startswith(old):
                m = new + m[len(old) :]
                break
        if m in out:
            m = n
        if m in out:
            raise UsageError(f"two tensors are both named {n!r} after matching; use --prefix")
        out[m] = n
    return out


def _rows(
    sa: Source,
    sb: Source,
    names_a: dict[str, str],
    names_b: dict[str, str],
    *,
    atol: float,
    rtol: float,
    con: Console,
) -> list[Row]:
    shared = [n for n in names_a if n in names_b]
    info_a = {n: sa.info(names_a[n]) for n in names_a}
    info_b = {n: sb.info(names_b[n]) for n in names_b}
    total = sum(
        info_a[n].nbytes + info_b[n].nbytes for n in shared if info_a[n].shape == info_b[n].shape
    )
    meter = con.meter(total, "comparing")
    rows = []
    for n, own in names_a.items():
        ia = info_a[n]
        if n not in names_b:
            rows.append(Row(n, "removed", own, None, ia, None, None))
            continue
        ib = info_b[n]
        if ia.shape != ib.shape:
            rows.append(Row(n, "shape", own, names_b[n], ia, ib, None))
            continue
        c = compare(sa.array(own), sb.array(names_b[n]), atol=atol, rtol=rtol, on_chunk=meter.add)
        status: Status = "dtype" if ia.dtype != ib.dtype else "equal" if c.equal else "changed"
        rows.append(Row(n, status, own, names_b[n], ia, ib, c))
    for n, own in names_b.items():
        if n not in names_a:
            rows.append(Row(n, "added", None, own, None, info_b[n], None))
    meter.finish()
    return rows


def layer_of(name: str) -> str:
    """The layer a tensor belongs to: its name up to the first numeric part (``blocks.3``,
    ``model.layers.12``), or without its last part when no part is a number (``head``)."""
    m = _NUMBERED.match(name)
    if m:
        return m.group(1)
    return _LAST_PART.sub("", name) or name


def layers(rows: list[Row]) -> list[Layer]:
    """Relative L2 change per layer: sqrt(sum ||a-b||^2) / sqrt(sum ||a||^2), in file order."""
    acc: dict[str, tuple[int, Norm, Norm]] = {}
    for r in rows:
        c = r.cmp
        if c is None or c.norm_a is None or c.norm_diff is None:
            continue
        key = layer_of(r.name)
        n, na, nd = acc.setdefault(key, (0, Norm(), Norm()))
        na.add_norm(c.norm_a)
        nd.add_norm(c.norm_diff)
        acc[key] = (n + 1, na, nd)
    return [Layer(k, n, nd.value() / max(na.value(), TINY)) for k, (n, na, nd) in acc.items()]


def _where(info: satchel.TensorInfo | None) -> dict[str, Any] | None:
    return {"dtype": info.dtype, "shape": list(info.shape)} if info else None


def _json(result: Result, args: argparse.Namespace, rules: list[tuple[str, str]]) -> dict[str, Any]:
    sa, sb = result.a, result.b
    return {
        "a": {"path": sa.where, "format": sa.format, "tensors": len(sa.names())},
        "b": {"path": sb.where, "format": sb.format, "tensors": len(sb.names())},
        "atol": args.atol,
        "rtol": args.rtol,
        "match": {
            "prefix_a": args.prefix_a,
            "prefix_b": args.prefix_b,
            "rename": [[old, new] for old, new in rules],
        },
        "equal": result.equal,
        "counts": dict(result.counts),
        "tensors": [
            {
                "name": r.name,
                "status": r.status,
                "name_a": r.name_a,
                "name_b": r.name_b,
                "a": _where(r.a),
                "b": _where(r.b),
                "max_abs": r.cmp.max_abs if r.cmp else None,
                "rel_l2": r.cmp.rel_l2 if r.cmp else None,
                "mismatched": r.cmp.mismatched if r.cmp else None,
                "elements": r.cmp.elements if r.cmp else None,
            }
            for r in result.rows
        ],
        "layers": (
            [{"name": g.name, "tensors": g.tensors, "rel_l2": g.rel_l2} for g in result.layers]
            if result.layers is not None
            else None
        ),
        "plot": result.plot,
    }


def _text(result: Result, args: argparse.Namespace, con: Console) -> None:
    st = con.style
    rows, counts = result.rows, result.counts
    for tag, src in (("a", result.a), ("b", result.b)):
        n = len(src.names())
        con.line(f"{st(tag, 'bold')}  {src.where}  {st(f'({src.format}, {n} tensors)', 'dim')}")
    shown = rows if args.all else [r for r in rows if r.status != "equal"]
    if shown:
        con.line()
        table: list[list[Cell]] = []
        for r in shown:
            c = r.cmp
            differ = "-"
            if c is not None and c.elements:
                differ = f"{fmt_count(c.mismatched)} ({c.mismatched / c.elements:.0%})"
            table.append(
                [
                    (r.status, (_COLOUR[r.status],)),
                    r.name,
                    _layout(r),
                    fmt_float(c.max_abs) if c else "-",
                    fmt_float(c.rel_l2) if c else "-",
                    differ,
                ]
            )
        headers = ["status", "name", "dtype, shape", "max |a-b|", "rel L2", "differ"]
        con.lines(render_table(headers, table, st, right=[3, 4, 5]))
    if result.layers is not None:
        con.line()
        layer_rows: list[list[Cell]] = [
            [g.name, str(g.tensors), fmt_float(g.rel_l2)] for g in result.layers
        ]
        con.lines(render_table(["layer", "tensors", "rel L2"], layer_rows, st, right=[1, 2]))
    con.line()
    tol = f"atol={args.atol:g}, rtol={args.rtol:g}"
    if result.equal:
        con.line(f"{st('equal', 'bold', 'green')}: {len(rows)} tensors match ({tol})")
    else:
        parts = [f"{counts[s]} {s}" for s in _ORDER if s != "equal" and counts[s]]
        con.line(
            f"{st('different', 'bold', 'yellow')}: {', '.join(parts)}; "
            f"{counts['equal']} equal ({tol})"
        )
    if result.plot:
        con.line(f"plot written to {result.plot}")


def _layout(r: Row) -> str:
    a = f"{r.a.dtype} {fmt_shape(r.a.shape)}" if r.a else None
    b = f"{r.b.dtype} {fmt_shape(r.b.shape)}" if r.b else None
    if a and b and a != b:
        return f"{a} -> {b}"
    return a or b or "-"
