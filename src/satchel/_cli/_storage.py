"""``--storage-option KEY=VALUE``: options for fsspec when a PATH is a URL (SPEC 11.8).

Credentials and the endpoint usually come from the environment, as for the AWS CLI
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``...: botocore reads them); these
options are for the rest. A VALUE that parses as JSON is that JSON (``anon=true``,
``config_kwargs={"read_timeout": 5}``), any other VALUE is a string.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import UsageError

__all__ = ["add_option", "storage_options"]


def add_option(group: Any) -> None:
    group.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an fsspec option for URL paths (s3://...; repeatable); VALUE is JSON or a string",
    )


def storage_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The parsed options, or ``None`` when none were given.

    Raises:
        UsageError: an option without ``=``, or with an empty key.
    """
    out: dict[str, Any] = {}
    for item in getattr(args, "storage_option", None) or []:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--storage-option {item!r}: expected KEY=VALUE")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        out[key.strip()] = value
    return out or None
