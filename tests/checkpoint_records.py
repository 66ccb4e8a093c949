"""Commit records written by hand, as SPEC 8.3 spells them (imported by the checkpoint tests).

Built here rather than by satchel, so a writer bug cannot hide a reader bug.
"""

from __future__ import annotations

import json
from typing import Any

import xxhash


def seal(doc: dict[str, Any], *, version: int = 2) -> bytes:
    """The bytes of a commit record holding ``doc``.

    Version 2 ends with the member ``record_xxh3``: the xxh3-64 of every byte of the file before
    the comma that precedes it. Version 1 (satchel 0.1.0) has no checksum of its own.
    """
    body = {k: v for k, v in doc.items() if k != "record_xxh3"} | {"version": version}
    text = json.dumps(body, indent=1)
    if version == 1:
        return text.encode()
    prefix = text[: text.rindex("}")].rstrip().encode()
    digest = xxhash.xxh3_64_hexdigest(prefix)
    return prefix + f',\n "record_xxh3": "{digest}"\n}}\n'.encode()
