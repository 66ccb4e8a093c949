"""The index of a sharded checkpoint: transformers' schema plus satchel's manifest (SPEC 9.2).

``{"metadata": {"total_size": N, ...}, "weight_map": {tensor: shard file}}`` is what
transformers, diffusers and huggingface_hub read and write. satchel adds ``"satchel"`` (the
manifest of the whole checkpoint as JSON text: structure, leaves, shared tensors, each stored
tensor's dtype, shape and xxh3-64) and ``"satchel.xxh3"`` (the checksum of that text), so the
exact nested structure and every checksum survive the split; other readers ignore both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from .._format.header import json_object
from .._format.manifest import MANIFEST_CHECKSUM_KEY, MANIFEST_KEY, Manifest, parse_manifest
from .._format.validate import xxh3_hex
from ..errors import FormatError, IntegrityError
from .names import safe_member
from .pool import is_ref, parse_ref

__all__ = ["MAX_INDEX", "Index", "encode_index", "parse_index"]

MAX_INDEX = 100_000_000  # as the single-file header cap (SPEC 1.2): bounds parse memory


@dataclass(frozen=True)
class Index:
    """A validated index: tensor -> shard file, the shard files in first-use order, the
    ``metadata`` object, and satchel's manifest when satchel wrote it.

    An incremental checkpoint's item (SPEC 8.17) maps tensors to pool references instead:
    ``pool`` holds them as tensor -> (pool file, key), and ``files`` then lists no shard.
    """

    weight_map: dict[str, str]
    files: tuple[str, ...]
    metadata: dict[str, object]
    manifest: Manifest | None
    pool: dict[str, tuple[str, str]] = field(default_factory=dict)


def encode_index(
    weight_map: Mapping[str, str],
    *,
    total_size: int,
    manifest: str | None,
    metadata: Mapping[str, object] | None = None,
) -> bytes:
    """The index file's bytes (JSON, indented as transformers writes it)."""
    doc: dict[str, object] = {
        "metadata": {**(metadata or {}), "total_size": total_size},
        "weight_map": dict(weight_map),
    }
    if manifest is not None:
        doc[MANIFEST_KEY] = manifest
        doc[MANIFEST_CHECKSUM_KEY] = xxh3_hex(manifest.encode("utf-8"))
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def parse_index(raw: bytes, *, where: str, pool: bool = False) -> Index:
    """Validate an index (SPEC 9.2, 9.5): every field checked before any shard is opened.

    With ``pool``, weight_map values may be pool references (SPEC 8.17) instead of shard
    files; a reader that cannot resolve them in a checkpoint root leaves it false and refuses
    them as any value that is not a plain file name.

    Raises:
        FormatError: not an index, or an entry names something other than a plain file in
            the folder (``..``, ``/``, an absolute path).
        IntegrityError: satchel's manifest does not match its checksum.
    """
    if len(raw) > MAX_INDEX:
        raise FormatError(f"{where}: index is {len(raw):,} bytes, over the {MAX_INDEX:,} cap")
    doc = json_object(raw, where=where, what="shard index")
    weight_map = doc.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise FormatError(
            f"{where}: 'weight_map' must map tensor names to shard files",
            path=where,
            field="weight_map",
        )
    files: dict[str, None] = {}
    refs: dict[str, tuple[str, str]] = {}
    for name, file in weight_map.items():
        if pool and is_ref(file):
            ref = parse_ref(file)
            if ref is None:
                raise FormatError(
                    f"{where}: weight_map entry {name!r} is {file!r}, not a valid pool "
                    "reference 'pool:<pool file>:<tensor>' (SPEC 8.17)",
                    path=where,
                    field=name,
                )
            refs[name] = ref
            continue
        if not safe_member(file):
            raise FormatError(
                f"{where}: weight_map entry {name!r} names {file!r}, which is not a plain file "
                "name in the index's folder; satchel opens nothing outside that folder",
                path=where,
                field=name,
            )
        files.setdefault(file, None)
    metadata = doc.get("metadata", {})
    if not isinstance(metadata, dict):
        raise FormatError(f"{where}: 'metadata' must be an object", path=where, field="metadata")
    total = metadata.get("total_size")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int | float)):
        raise FormatError(
            f"{where}: metadata.total_size must be a number", path=where, field="total_size"
        )
    if refs and files:
        raise FormatError(
            f"{where}: weight_map mixes pool references and shard files; an incremental item "
            "references the pool only (SPEC 8.17)",
            path=where,
            field="weight_map",
        )
    manifest = _manifest(doc, weight_map, where)
    if refs and manifest is None:
        raise FormatError(
            f"{where}: pool references need satchel's manifest in the index (SPEC 8.17)",
            path=where,
            field="weight_map",
        )
    return Index(dict(weight_map), tuple(files), metadata, manifest, refs)


def _manifest(doc: dict[str, object], weight_map: dict[str, str], where: str) -> Manifest | None:
    text, digest = doc.get(MANIFEST_KEY), doc.get(MANIFEST_CHECKSUM_KEY)
    if text is None and digest is None:
        return None  # written by transformers or huggingface_hub: a flat dict of tensors
    if not isinstance(text, str) or not isinstance(digest, str):
        raise FormatError(
            f"{where}: {MANIFEST_KEY!r} and {MANIFEST_CHECKSUM_KEY!r} must both be strings",
            path=where,
            field=MANIFEST_KEY,
        )
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise FormatError(f"{where}: the satchel manifest is not valid text") from e
    if xxh3_hex(raw) != digest:
        raise IntegrityError(
            f"{where}: the satchel manifest does not match its checksum; the index is damaged "
            "(restore it from a good copy)",
            path=where,
            field=MANIFEST_KEY,
            reason="manifest checksum mismatch",
        )
    m = parse_manifest(text, where=f"{where}: satchel manifest")
    if set(m.stored) != set(weight_map):
        extra = sorted(set(weight_map) - set(m.stored))[:5]
        missing = sorted(set(m.stored) - set(weight_map))[:5]
        raise FormatError(
            f"{where}: weight_map and the satchel manifest disagree (only in weight_map: "
            f"{extra}, only in the manifest: {missing})",
            path=where,
            field="weight_map",
        )
    return m
