"""The ``satchel`` command: inspect, verify, diff, convert and ls (docs/cli.md).

Each subcommand lives in its own module with ``add_parser`` and ``run(args, console) -> int``
and calls only satchel's public API. This module parses the arguments, runs the command and
turns errors into one line on stderr (the traceback only with ``--debug``).

Exit status: 0 success (clean / equal), 1 corrupt (verify) or different (diff), 2 unreadable,
usage error or any other error; 130 when interrupted; 141 when stdout is closed early.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn, TextIO

import satchel

from . import _convert, _diff, _inspect, _ls, _verify
from ._console import Console
from ._render import HelpFormatter
from ._storage import add_option

__all__ = ["main"]

EXIT_OK, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2
_COMMANDS = (_inspect, _verify, _diff, _convert, _ls)

DESCRIPTION = """\
Look inside, check, compare and convert deep-learning state: satchel and safetensors files,
PyTorch .pt, NumPy .npy/.npz, MXNet .params, OneFlow folders, TensorFlow checkpoints, Keras,
GGUF, and CheckpointManager folders. Nothing read is ever executed (no pickle)."""

EPILOG = """\
examples:
  satchel inspect model.pt
  satchel verify runs/exp1
  satchel diff base.pt tuned.safetensors --plot drift.png
  satchel convert model.pt model.safetensors
  satchel ls runs/exp1
  satchel verify s3://bucket/model.safetensors        # AWS_ENDPOINT_URL etc. from the environment

Every command takes --json (one JSON document on stdout), --no-progress, --color and --debug.
exit status: 0 ok, 1 corrupt (verify) or different (diff), 2 unreadable or error.
'satchel COMMAND --help' shows each command's options; docs/cli.md has the JSON schema."""


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    opts = common.add_argument_group("output options")
    opts.add_argument(
        "--json", action="store_true", help="print one JSON document (schema in docs/cli.md)"
    )
    opts.add_argument(
        "--no-progress", action="store_true", help="never draw progress bars (stderr)"
    )
    opts.add_argument(
        "--color",
        "--colour",
        dest="color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour output: auto (a terminal without NO_COLOR), always or never",
    )
    opts.add_argument("--debug", action="store_true", help="show the traceback of an error")
    add_option(common.add_argument_group("object storage"))
    return common


def build_parser() -> argparse.ArgumentParser:
    """The ``satchel`` argument parser with every subcommand."""
    parser = _Parser(
        prog="satchel",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"satchel {satchel.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    common = _common()
    for module in _COMMANDS:
        module.add_parser(sub, common)
    return parser


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run ``satchel`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = build_parser().parse_args(argv)
    con = Console(out, err, colour=args.color, json_mode=args.json, progress=not args.no_progress)
    try:
        code: int = args.run(args, con)
        out.flush()
    except KeyboardInterrupt:
        con.error("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, as tools killed by SIGPIPE do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        return 141
    except (satchel.SatchelError, OSError, ValueError, MemoryError) as e:
        return _fail(con, args, _message(e), e)
    except Exception as e:  # a bug: still one line, and the traceback with --debug
        return _fail(con, args, f"internal error: {type(e).__name__}: {e} (please report it)", e)
    return code


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and not isinstance(e, satchel.SatchelError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}"
    if isinstance(e, satchel.MissingKeyError):
        return str(e)
    return str(e) or type(e).__name__


def _fail(con: Console, args: argparse.Namespace, message: str, e: BaseException) -> int:
    if args.debug:
        traceback.print_exception(e, file=con.err)
    con.error(message)
    if con.json_mode:
        error: dict[str, str] = {"type": type(e).__name__, "message": message}
        if isinstance(e, satchel.FormatError):
            # The file and field at fault as data, so scripts need not parse the message.
            error.update({k: v for k, v in (("path", e.path), ("field", e.field)) if v})
        con.emit(args.command, {"error": error})
    return EXIT_ERROR
