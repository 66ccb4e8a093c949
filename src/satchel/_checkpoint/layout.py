"""The names inside a checkpoint root (SPEC 8.1, 8.2): the only place they are spelled.

::

    runs/exp1/                          a root
      .satchel.lock                     the writer lock (SPEC 8.6)
      step_00000100/                    one committed step (zero-padded to 8 digits at least)
        model.satchel                   one single file per item, ``<item>.satchel``
        extra.satchel                   the ``extra=`` value is the item ``extra``
        optimizer/                      an item larger than ``max_shard_size``: sharded (8.15)
          model-00001-of-00002.safetensors    its shards and its index, in the Hugging Face
          model-00002-of-00002.safetensors    layout (SPEC 9), named as ``from_pretrained``
          model.safetensors.index.json        expects them whatever the item is
        manifest.json                   the commit record, written last (SPEC 8.3)
      .step_00000200.satchel-tmp-<pid>-<hex>        a step being written (or left by a crash)
      .trash-step_00000050.satchel-tmp-<pid>-<hex>  a step being deleted

Everything here is about names and listing; nothing writes.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from .._io.atomic import TMP_MARKER
from .._shards.names import index_name

__all__ = [
    "COMMIT_FILE",
    "EXTRA_ITEM",
    "LOCK_FILE",
    "SHARD_INDEX",
    "SHARD_PREFIX",
    "check_item_name",
    "has_commit",
    "is_item_file",
    "is_item_folder",
    "is_item_member",
    "is_root",
    "is_step_dir",
    "is_step_folder",
    "is_temp",
    "item_file",
    "list_steps",
    "step_name",
    "step_of",
    "temp_path",
    "trash_path",
]

LOCK_FILE = ".satchel.lock"  # SPEC 8.1
COMMIT_FILE = "manifest.json"  # SPEC 8.2
EXTRA_ITEM = "extra"  # SPEC 8.2: what save(extra=...) is stored as
_ITEM_SUFFIX = ".satchel"
# SPEC 8.15: a sharded item's files. transformers, huggingface_hub and diffusers look for the
# index under exactly this name, so every item's folder uses it, whatever the item is.
SHARD_PREFIX = "model"
SHARD_INDEX = index_name(SHARD_PREFIX)
_STEP_DIR = re.compile(r"^step_(\d{1,19})$")  # 19 digits: every step fits an int64
# Item names become file names: no separators, no leading dot, nothing a shell would expand.
_ITEM_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_ITEM_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\.satchel$")
# A file in an item folder: a plain name, never hidden (so never a temp name, SPEC 7.1).
_MEMBER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")


def step_name(step: int) -> str:
    """The folder name of ``step``: ``step_00000100``."""
    return f"step_{step:08d}"


def step_of(p: Path) -> int | None:
    """The step a folder's name says, or ``None``."""
    m = _STEP_DIR.match(p.name)
    return int(m.group(1)) if m else None


def is_step_dir(p: Path) -> bool:
    """Whether ``p`` is named and shaped like a step folder (committed or not); links are not."""
    return bool(_STEP_DIR.match(p.name)) and p.is_dir() and not p.is_symlink()


def has_commit(folder: Path) -> bool:
    """Whether ``folder`` holds a commit record file (not whether it parses)."""
    return (folder / COMMIT_FILE).is_file()


def is_step_folder(p: Path) -> bool:
    """A step folder with a commit record file: what ``satchel inspect root/step_<n>`` opens."""
    return is_step_dir(p) and has_commit(p)


def is_root(p: Path) -> bool:
    """A checkpoint root: a folder with the writer's lock file or at least one step folder."""
    if not p.is_dir():
        return False
    return (p / LOCK_FILE).exists() or any(is_step_dir(c) for c in p.iterdir())


def list_steps(root: Path) -> list[tuple[int, Path]]:
    """Every step folder of ``root`` (committed or not), by step; anything else is ignored.

    One directory read: whether an entry is a folder (and not a link) comes with its name, so
    no step renamed away after the read is dropped here unnoticed (SPEC 8.13).
    """
    found = []
    with os.scandir(root) as entries:
        for entry in entries:
            m = _STEP_DIR.match(entry.name)
            if m and entry.is_dir(follow_symlinks=False):
                found.append((int(m.group(1)), root / entry.name))
    return sorted(found, key=lambda sp: sp[0])


def is_temp(p: Path) -> bool:
    """An entry a writer is building or deleting, or one a crashed writer left (SPEC 8.7)."""
    return TMP_MARKER in p.name


def temp_path(root: Path, step: int) -> Path:
    """A fresh temp name in ``root`` to build ``step`` under before the commit rename."""
    return root / f".{step_name(step)}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"


def trash_path(folder: Path) -> Path:
    """A fresh temp name to rename a step folder to before deleting it (SPEC 8.7)."""
    suffix = f"{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
    return folder.parent / f".trash-{folder.name}{suffix}"


def check_item_name(name: str) -> bool:
    """Whether ``name`` may name an item passed to ``save`` (``extra`` is reserved).

    No name ends in ``.satchel`` or is ``manifest.json`` (SPEC 8.15): a sharded item's folder is
    named as the item, so it can then be neither another item's file nor the commit record.
    """
    return is_item_folder(name) and name != EXTRA_ITEM


def item_file(name: str) -> str:
    """The file name of item ``name`` in its step folder."""
    return f"{name}{_ITEM_SUFFIX}"


def is_item_file(basename: str) -> bool:
    """Whether a commit record's ``file`` is a plain ``<name>.satchel`` basename (SPEC 8.3)."""
    return bool(_ITEM_FILE.match(basename))


def is_item_folder(basename: str) -> bool:
    """Whether a commit record's ``folder`` may name a sharded item's folder (SPEC 8.15)."""
    return (
        bool(_ITEM_NAME.match(basename))
        and not basename.endswith(_ITEM_SUFFIX)
        and basename != COMMIT_FILE
    )


def is_item_member(basename: str) -> bool:
    """Whether a commit record may list ``basename`` as a file of an item folder (SPEC 8.16):
    a plain name such as a shard, the index, or a distributed item's pieces and layout."""
    return bool(_MEMBER.match(basename))
