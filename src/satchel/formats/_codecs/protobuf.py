"""The few protobuf messages a TensorFlow bundle holds, decoded from the wire format by hand.

docs/formats.md#tf-protos (``tensorflow/core/protobuf/tensor_bundle.proto``) and #tf-object-graph
(``trackable_object_graph.proto``). The wire format: a key varint ``field << 3 | wire_type``,
then a varint (type 0), 8 bytes (1), a length-prefixed run (2) or 4 bytes (5). Every varint is
at most 10 bytes and below 2**64, every length fits the bytes that remain, field numbers are
positive, groups (types 3, 4) are refused, and unknown fields are skipped, as protobuf does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ..._tree import MAX_DEPTH
from ...errors import FormatError

__all__ = [
    "BundleEntry",
    "BundleHeader",
    "ObjectNode",
    "SlotRef",
    "fields",
    "parse_entry",
    "parse_header",
    "parse_object_graph",
    "read_varint",
    "readable_paths",
]

_MAX_VARINT = 10
_MAX_NODES = 10_000_000  # a graph node costs >= 2 bytes on the wire; this only bounds lists
_MAX_PATHS = 16  # readable paths kept per object (a shared object is reachable many ways)
_PATH_BUDGET = 1_000_000  # paths recorded in all, beyond each object's first
Buffer = bytes | memoryview


def read_varint(buf: Buffer, pos: int, *, where: str) -> tuple[int, int]:
    """(value, next position) of the base-128 varint at ``buf[pos]``.

    Raises:
        FormatError: the varint runs past the buffer, is longer than 10 bytes or above 2**64.
    """
    value = shift = 0
    for i in range(_MAX_VARINT):
        if pos + i >= len(buf):
            raise FormatError(f"{where}: varint at byte {pos} runs past the end")
        b = buf[pos + i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            if value >= 1 << 64:
                raise FormatError(f"{where}: varint at byte {pos} exceeds 64 bits")
            return value, pos + i + 1
        shift += 7
    raise FormatError(f"{where}: varint at byte {pos} is longer than {_MAX_VARINT} bytes")


def fields(buf: Buffer, *, where: str) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field; a length-delimited value is a view."""
    view = memoryview(buf)
    pos = 0
    while pos < len(view):
        key, pos = read_varint(view, pos, where=where)
        num, wt = key >> 3, key & 7
        if not 0 < num < 1 << 29:
            raise FormatError(f"{where}: protobuf field number {num} is not valid")
        if wt == 0:
            value, pos = read_varint(view, pos, where=where)
            yield num, wt, value
        elif wt in (1, 5):
            n = 8 if wt == 1 else 4
            if pos + n > len(view):
                raise FormatError(f"{where}: fixed-width field {num} runs past the end")
            yield num, wt, int.from_bytes(view[pos : pos + n], "little")
            pos += n
        elif wt == 2:
            n, pos = read_varint(view, pos, where=where)
            if n > len(view) - pos:
                raise FormatError(
                    f"{where}: field {num} claims {n} bytes but {len(view) - pos} remain"
                )
            yield num, wt, view[pos : pos + n]
            pos += n
        else:
            raise FormatError(f"{where}: protobuf wire type {wt} (field {num}) is not supported")


def _int(value: int | memoryview, wt: int, *, bits: int, where: str, what: str) -> int:
    """A varint-encoded intN (negative numbers are sign-extended to 64 bits on the wire)."""
    if wt != 0 or not isinstance(value, int):
        raise FormatError(f"{where}: {what} has wire type {wt}, expected a varint")
    if value >= 1 << 63:
        value -= 1 << 64
    if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
        raise FormatError(f"{where}: {what} = {value} does not fit int{bits}")
    return value


def _bytes(value: int | memoryview, wt: int, *, where: str, what: str) -> memoryview:
    if wt != 2 or not isinstance(value, memoryview):
        raise FormatError(f"{where}: {what} has wire type {wt}, expected bytes")
    return value


def _text(value: int | memoryview, wt: int, *, where: str, what: str) -> str:
    raw = _bytes(value, wt, where=where, what=what)
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{where}: {what} is not UTF-8") from e


# -- tensor_bundle.proto ------------------------------------------------------------------------
@dataclass(frozen=True)
class BundleHeader:
    """``BundleHeaderProto``: shard count, byte order (0 little, 1 big), ``VersionDef``."""

    num_shards: int
    endianness: int
    producer: int
    min_consumer: int
    bad_consumers: tuple[int, ...]


@dataclass(frozen=True)
class BundleEntry:
    """``BundleEntryProto``; ``slices`` holds (start, length) per dim, length -1 = full extent."""

    dtype: int
    shape: tuple[int, ...] | None  # None: unknown rank
    shard_id: int
    offset: int
    size: int
    crc32c: int
    slices: tuple[tuple[tuple[int, int], ...], ...] = ()


def parse_header(buf: Buffer, *, where: str) -> BundleHeader:
    """Decode a ``BundleHeaderProto`` (docs/formats.md#tf-protos)."""
    num_shards = endianness = producer = min_consumer = 0
    bad: list[int] = []
    for num, wt, value in fields(buf, where=where):
        if num == 1:
            num_shards = _int(value, wt, bits=32, where=where, what="num_shards")
        elif num == 2:
            endianness = _int(value, wt, bits=32, where=where, what="endianness")
        elif num == 3:
            version = _bytes(value, wt, where=where, what="version")
            for vnum, vwt, vval in fields(version, where=where):
                if vnum == 1:
                    producer = _int(vval, vwt, bits=32, where=where, what="producer")
                elif vnum == 2:
                    min_consumer = _int(vval, vwt, bits=32, where=where, what="min_consumer")
                elif vnum == 3:
                    bad.extend(_repeated_int(vval, vwt, where=where, what="bad_consumers"))
    return BundleHeader(num_shards, endianness, producer, min_consumer, tuple(bad))


def _repeated_int(value: int | memoryview, wt: int, *, where: str, what: str) -> list[int]:
    if wt == 0:
        return [_int(value, wt, bits=32, where=where, what=what)]
    packed = _bytes(value, wt, where=where, what=what)
    out, pos = [], 0
    while pos < len(packed):
        v, pos = read_varint(packed, pos, where=where)
        out.append(_int(v, 0, bits=32, where=where, what=what))
    return out


def parse_entry(buf: Buffer, *, where: str) -> BundleEntry:
    """Decode a ``BundleEntryProto`` (docs/formats.md#tf-protos); absent fields are 0."""
    dtype = shard_id = offset = size = crc = 0
    shape: tuple[int, ...] | None = ()
    slices: list[tuple[tuple[int, int], ...]] = []
    for num, wt, value in fields(buf, where=where):
        if num == 1:
            dtype = _int(value, wt, bits=32, where=where, what="dtype")
        elif num == 2:
            shape = _shape(_bytes(value, wt, where=where, what="shape"), where=where)
        elif num == 3:
            shard_id = _int(value, wt, bits=32, where=where, what="shard_id")
        elif num == 4:
            offset = _int(value, wt, bits=64, where=where, what="offset")
        elif num == 5:
            size = _int(value, wt, bits=64, where=where, what="size")
        elif num == 6:
            if wt != 5 or not isinstance(value, int):
                raise FormatError(f"{where}: crc32c has wire type {wt}, expected fixed32")
            crc = value
        elif num == 7:
            slices.append(_slice(_bytes(value, wt, where=where, what="slice"), where=where))
    return BundleEntry(dtype, shape, shard_id, offset, size, crc, tuple(slices))


def _shape(buf: memoryview, *, where: str) -> tuple[int, ...] | None:
    dims: list[int] = []
    for num, wt, value in fields(buf, where=where):
        if num == 2:
            size = 0
            for dnum, dwt, dval in fields(_bytes(value, wt, where=where, what="dim"), where=where):
                if dnum == 1:
                    size = _int(dval, dwt, bits=64, where=where, what="dim size")
            dims.append(size)
        elif num == 3 and _int(value, wt, bits=32, where=where, what="unknown_rank"):
            return None
    return tuple(dims)


def _slice(buf: memoryview, *, where: str) -> tuple[tuple[int, int], ...]:
    extents: list[tuple[int, int]] = []
    for num, wt, value in fields(buf, where=where):
        if num != 1:
            continue
        start, length = 0, -1  # no length: the extent covers the whole dimension
        for enum_, ewt, evalue in fields(
            _bytes(value, wt, where=where, what="extent"), where=where
        ):
            if enum_ == 1:
                start = _int(evalue, ewt, bits=64, where=where, what="extent start")
            elif enum_ == 2:
                length = _int(evalue, ewt, bits=64, where=where, what="extent length")
        extents.append((start, length))
    return tuple(extents)


# -- trackable_object_graph.proto ---------------------------------------------------------------
@dataclass(frozen=True)
class SlotRef:
    """``SlotVariableReference``: optimizer slot ``name`` of variable ``original`` is ``slot``."""

    original: int
    name: str
    slot: int


@dataclass(frozen=True)
class ObjectNode:
    """One ``TrackableObject``: children (node id, local name), attributes, slot variables."""

    children: tuple[tuple[int, str], ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()  # (attribute name, checkpoint key)
    slots: tuple[SlotRef, ...] = field(default=())


def parse_object_graph(buf: Buffer, *, where: str) -> list[ObjectNode]:
    """Decode a ``TrackableObjectGraph`` (docs/formats.md#tf-object-graph); node ids are checked."""
    nodes: list[ObjectNode] = []
    for num, wt, value in fields(buf, where=where):
        if num != 1:
            continue
        if len(nodes) >= _MAX_NODES:
            raise FormatError(f"{where}: object graph has more than {_MAX_NODES} nodes")
        nodes.append(_object(_bytes(value, wt, where=where, what="node"), where=where))
    for i, node in enumerate(nodes):
        refs = [c for c, _ in node.children]
        refs += [r for s in node.slots for r in (s.original, s.slot)]
        if any(not 0 <= r < len(nodes) for r in refs):
            raise FormatError(f"{where}: object graph node {i} refers to a node that is not there")
    return nodes


def _object(buf: memoryview, *, where: str) -> ObjectNode:
    children: list[tuple[int, str]] = []
    attributes: list[tuple[str, str]] = []
    slots: list[SlotRef] = []
    for num, wt, value in fields(buf, where=where):
        sub = None if num not in (1, 2, 3) else _bytes(value, wt, where=where, what="member")
        if sub is None:
            continue
        parts: dict[int, int | str] = {}
        for snum, swt, svalue in fields(sub, where=where):
            if (num, snum) in ((1, 2), (2, 1), (2, 3), (3, 2)):
                parts[snum] = _text(svalue, swt, where=where, what="object graph name")
            elif (num, snum) in ((1, 1), (3, 1), (3, 3)):
                parts[snum] = _int(svalue, swt, bits=32, where=where, what="node id")
        if num == 1:
            children.append((int(parts.get(1, 0)), str(parts.get(2, ""))))
        elif num == 2:
            attributes.append((str(parts.get(1, "")), str(parts.get(3, ""))))
        else:
            slots.append(SlotRef(int(parts.get(1, 0)), str(parts.get(2, "")), int(parts.get(3, 0))))
    return ObjectNode(tuple(children), tuple(attributes), tuple(slots))


def readable_paths(nodes: list[ObjectNode]) -> dict[str, list[str]]:
    """Checkpoint key -> the object paths (local names from the root) that reach it.

    Breadth-first, as TF names keys, so a key's first path is the one it was built from.
    """
    if not nodes:
        return {}
    paths: dict[int, list[tuple[str, ...]]] = {0: [()]}
    queue: list[tuple[int, tuple[str, ...], frozenset[int]]] = [(0, (), frozenset({0}))]
    budget = _PATH_BUDGET
    for node_id, names, seen in queue:  # the queue grows while we walk it: breadth-first
        if len(names) >= MAX_DEPTH:
            continue
        for child, local in nodes[node_id].children:
            known = paths.setdefault(child, [])
            # Every object gets its first path; extra paths (shared objects) within a budget,
            # so a hostile graph of many diamonds cannot make this walk explode.
            if child in seen or len(known) >= _MAX_PATHS or (known and budget <= 0):
                continue
            budget -= 1
            known.append((*names, local))
            queue.append((child, (*names, local), seen | {child}))
    out: dict[str, list[str]] = {}
    for node_id, node in enumerate(nodes):
        for slot in node.slots:
            for var in paths.get(slot.original, [])[:_MAX_PATHS]:
                for opt in paths.get(node_id, [])[:1]:
                    named = (*var, ".OPTIMIZER_SLOT", *opt, slot.name)
                    paths.setdefault(slot.slot, []).append(named)
    for node_id, node in enumerate(nodes):
        for attr, key in node.attributes:
            tail = () if attr == "VARIABLE_VALUE" else (".ATTRIBUTES", attr)
            found = ["/".join((*p, *tail)) for p in paths.get(node_id, [])[:_MAX_PATHS]]
            out.setdefault(key, []).extend(f for f in found if f not in out.get(key, []))
    return out
