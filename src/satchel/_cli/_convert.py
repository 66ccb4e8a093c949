"""``satchel convert SRC DST [--to FORMAT]``: ``satchel.convert`` with a report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, cast, get_args

import satchel

from .._convert import Target
from .._remote.url import is_url
from ..errors import UsageError
from ._console import Console
from ._render import HelpFormatter, human_bytes
from ._source import disk_size
from ._storage import storage_options

__all__ = ["add_parser", "run", "target_for"]

TARGETS: tuple[str, ...] = get_args(Target)
_BY_SUFFIX: dict[str, Target] = {
    ".npz": "npz",
    ".pt": "torch",
    ".pth": "torch",
    ".safetensors": "satchel",
}

EXAMPLES = """\
examples:
  satchel convert model.pt model.safetensors           # --to satchel (from the suffix)
  satchel convert ckpt-1.index weights.npz             # TensorFlow -> NumPy .npz
  satchel convert model.params model_of --to oneflow   # MXNet -> OneFlow folder
  satchel convert model.safetensors model.pt --force   # replace an existing model.pt

Without --to the format follows DST's suffix: .npz -> npz, .pt/.pth -> torch, anything else ->
satchel (a safetensors file that also keeps the structure). Nothing from SRC is ever executed.
"""


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "convert",
        parents=[common],
        help="convert any readable format to satchel/safetensors, npz, oneflow or torch",
        description="Read SRC in whatever format it is and write DST atomically.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    p.add_argument("src", metavar="SRC", help="a file or folder in any format satchel reads")
    p.add_argument("dst", metavar="DST", help="where to write (refused if it exists, see --force)")
    p.add_argument("--to", choices=TARGETS, help="output format (default: from DST's suffix)")
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    p.set_defaults(run=run)


def target_for(dst: Path, to: str | None) -> Target:
    """``--to``, else the format DST's suffix names, else ``satchel``."""
    if to is None:
        return _BY_SUFFIX.get(dst.suffix.lower(), "satchel")
    if to not in TARGETS:
        raise UsageError(f"--to {to!r}: expected one of {', '.join(TARGETS)}")
    return cast(Target, to)


def run(args: argparse.Namespace, con: Console) -> int:
    options = storage_options(args)
    # A URL stays a string (a Path would fold "s3://" into "s3:/"); its size is not on disk.
    src: str | Path = args.src if is_url(args.src) else Path(args.src)
    dst: str | Path = args.dst if is_url(args.dst) else Path(args.dst)
    to = target_for(Path(args.dst.rpartition("/")[2]) if isinstance(dst, str) else dst, args.to)
    if isinstance(dst, Path) and (dst.exists() or dst.is_symlink()) and not args.force:
        raise UsageError(f"{dst}: already exists; pass --force to replace it")
    src_opts = options if isinstance(src, str) else None
    dst_opts = options if isinstance(dst, str) else None
    with satchel.open(src, framework="numpy", storage_options=src_opts) as opened:
        src_format = opened.format  # read once: format and data
        satchel.convert(opened, dst, to=to, progress=con.api_progress(), storage_options=dst_opts)
    with satchel.open(dst, verify=False, framework="numpy", storage_options=dst_opts) as out:
        tensors = len(out.keys())
    src_size = None if isinstance(src, str) else disk_size(src)
    dst_size = None if isinstance(dst, str) else disk_size(dst)
    if con.json_mode:
        con.emit(
            "convert",
            {
                "src": {"path": str(src), "format": src_format, "size": src_size},
                "dst": {"path": str(dst), "format": to, "size": dst_size},
                "tensors": tensors,
            },
        )
        return 0
    st = con.style
    con.line(
        f"{st('converted', 'bold', 'green')} {src} ({src_format}{_size(src_size)}) -> "
        f"{dst} ({to}{_size(dst_size)}, {tensors} tensors)"
    )
    return 0


def _size(n: int | None) -> str:
    return "" if n is None else f", {human_bytes(n)}"
