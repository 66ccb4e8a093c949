"""Hostile single files: one or more tests per rule of docs/formats.md#hostile-input.

Every file is built by a generator in ``hostile_cases`` (no binary fixtures). Each test asserts
the *exact* satchel error class and that the message names the file and the field at fault.
The worst cases (huge header lengths, huge shape products, entry counts, deep nesting) are also
loaded in a child process under ``RLIMIT_AS = 1 GiB`` to show they are refused before anything
large is allocated.

``CATALOGUE`` maps each rule to the tests that cover it; ``test_catalogue_is_covered`` keeps the
table honest.
"""

from __future__ import annotations

import io
import json
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import satchel
from satchel._format import header as header_mod
from satchel._format.header import MAX_ENTRIES, MAX_HEADER

try:  # tests/ as a package or as a plain folder on sys.path
    from . import hostile_cases as hc
except ImportError:
    import hostile_cases as hc

FORMATS_DOC = Path(__file__).resolve().parents[1] / "docs" / "formats.md"

# rule of docs/formats.md#hostile-input -> tests covering it. All header rules (H) apply to a
# single file; of the number (N) and integrity (I) rules, these have no single-file hostile
# input: N5 (the native format has no alignment field), N6 (string lengths are bounded by the
# header cap), I5 (SIGBUS when a mapped file shrinks) and I8 (NaN values are data).
CATALOGUE: dict[str, list[str]] = {
    "H1": ["test_file_too_short_for_the_length_field"],
    "H2": ["test_header_length_boundaries", "test_confined_worst_cases"],
    "H3": ["test_header_length_without_json", "test_smallest_header_is_accepted"],
    "H4": ["test_non_utf8_header", "test_lone_surrogate_in_manifest"],
    "H5": ["test_invalid_json"],
    "H6": [
        "test_header_not_an_object",
        "test_entry_fields",
        "test_manifest_fields",
        "test_manifest_version",
        "test_manifest_field_types_unhashable",
        "test_leaf_fields",
        "test_root_nodes",
        "test_root_numbers_are_finite",
        "test_manifest_contradicts_header",
        "test_torch_scalar_leaf_with_elements",
        "test_torch_integer_parameter_requires_grad",
    ],
    "H7": ["test_duplicate_keys"],
    "H8": ["test_metadata_must_map_strings_to_strings"],
    "H9": ["test_unknown_dtype"],
    "H10": ["test_offsets_must_tile", "test_swapped_offsets_are_caught_by_checksums"],
    "H11": ["test_two_names_one_span"],
    "H12": ["test_zero_size_tensor_offset_policy"],
    "H13": ["test_trailing_bytes"],
    "H14": ["test_span_must_match_shape"],
    "H15": ["test_shape_product_overflow", "test_confined_worst_cases"],
    "H16": ["test_integer_fields_are_integers_in_range"],
    "H17": ["test_sub_byte_dtypes_are_unknown"],
    "H18": [
        "test_entry_cap",
        "test_entry_cap_logic",
        "test_many_entries_load_in_linear_time",
        "test_many_tensors_satchel_file_load_in_linear_time",
        "test_clashing_paths_open_in_linear_time",
        "test_long_tensor_name",
        "test_header_parse_memory_is_bounded",
    ],
    "H19": [
        "test_deep_nesting",
        "test_sixty_four_levels_load",
        "test_confined_worst_cases",
    ],
    "H20": ["test_leading_whitespace_rejected_trailing_accepted"],
    "N1": ["test_entry_cap", "test_leaf_references_out_of_range", "test_span_must_match_shape"],
    "N2": ["test_too_many_dims", "test_sixty_four_dims_load"],
    "N3": ["test_dim_product_wraps", "test_zero_size_tensor_with_huge_dims"],
    "N4": ["test_offset_accumulation"],
    "N7": ["test_integer_fields_are_integers_in_range", "test_leaf_fields"],
    "N8": ["test_unknown_dtype"],
    "N9": ["test_duplicate_keys"],
    "N10": ["test_header_length_boundaries"],
    "I1": ["test_data_bit_flips", "test_lazy_open_names_the_damaged_tensor"],
    "I2": ["test_bit_flip_in_tensor_name"],
    "I3": ["test_same_size_corrupt_file"],
    "I4": ["test_every_truncation_is_refused"],
    "I6": ["test_zero_checksum_is_not_skipped"],
    "I7": ["test_wrong_content_same_layout"],
    "I9": ["test_half_written_file"],
}
# Views and strides (SPEC 3.6), no rule of their own: the in-file analogue of N1 and N3.
VIEW_TESTS = [
    "test_view_outside_stored_tensor",
    "test_view_huge_strides_on_short_dims",
    "test_view_broadcast_beyond_int64",
    "test_view_negative_strides_torch",
]


def put(tmp_path: Path, blob: bytes, name: str = "hostile.satchel") -> Path:
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def rejects(path: Path, cls: type[satchel.SatchelError], *needles: str, **kw: Any) -> str:
    """Load ``path``; it must raise exactly ``cls`` naming the file and every needle."""
    with pytest.raises(satchel.SatchelError) as info:
        satchel.load(path, **kw)
    err = info.value
    msg = str(err)
    assert type(err) is cls, f"expected {cls.__name__}, got {type(err).__name__}: {msg}"
    assert str(path) in msg, f"message does not name the file: {msg}"
    for needle in needles:
        assert needle in msg, f"message lacks {needle!r}: {msg}"
    return msg


FormatError = satchel.FormatError
IntegrityError = satchel.IntegrityError


# -- H1-H5: the envelope -------------------------------------------------------------------------


@pytest.mark.parametrize("blob", [b"", b"\x00", b"{}", b"\x02\x00\x00\x00\x00\x00\x00"])
def test_file_too_short_for_the_length_field(tmp_path: Path, blob: bytes) -> None:
    rejects(put(tmp_path, blob), FormatError, f"file is {len(blob)} bytes", "8-byte header length")


def _zip(*names: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in names:
            z.writestr(name, b"x = 1\n")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("blob", "looks"),
    [
        (b"hello, this is a README\nwith two lines\n", "text ('hello, this is a README with"),
        (b'{"model": {"layers": 3}, "lr": 0.1}', 'JSON text (\'{"model"'),
        (_zip("notes.txt", "more.txt"), "a zip archive ('notes.txt', 'more.txt')"),
        (_zip("m/extra/notes.txt", "m/code/__torch__/m.py"), "a TorchScript archive"),
        (bytes.fromhex("1f8b0800000000000003") + bytes(20), "gzip-compressed data"),
        (
            b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.",
            "a Python pickle",
        ),
        (b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c", "binary data starting 01 02 03"),
    ],
    ids=["text", "json", "zip", "torchscript", "gzip", "pickle", "binary"],
)
def test_unknown_format_says_what_its_bytes_look_like(
    tmp_path: Path, blob: bytes, looks: str
) -> None:
    """Issue 8.6b: not a safetensors "header length exceeds the cap" message."""
    path = put(tmp_path, blob)
    msg = rejects(path, FormatError, "not a format satchel reads", looks, "satchel reads")
    assert "header length" not in msg
    for call in (satchel.detect, satchel.open):
        with pytest.raises(FormatError, match="not a format satchel reads"):
            call(path)


def _length_cases() -> list[tuple[str, Any]]:
    named = [("0", 0), ("1", 1), ("7", 7), ("8", 8)]
    named += [("len-1", "len-1"), ("len", "len"), ("len+1", "len+1"), ("N-1", "N-1")]
    named += [("N+1", "N+1"), ("2^31-1", 2**31 - 1), ("2^31", 2**31), ("2^32", 2**32)]
    named += [("2^53+1", 2**53 + 1), ("2^63-1", 2**63 - 1), ("2^63", 2**63)]
    named += [("2^64-1", 2**64 - 1), ("cap", MAX_HEADER), ("cap+1", MAX_HEADER + 1)]
    return named


def _resolve_length(value: Any, blob: bytes) -> int:
    true_n = int.from_bytes(blob[:8], "little")
    table = {
        "len-1": len(blob) - 1,
        "len": len(blob),
        "len+1": len(blob) + 1,
        "N-1": true_n - 1,
        "N+1": true_n + 1,
    }
    return table.get(value, value) if isinstance(value, str) else value


@pytest.mark.parametrize(("label", "value"), _length_cases(), ids=[c[0] for c in _length_cases()])
def test_header_length_boundaries(tmp_path: Path, label: str, value: Any) -> None:
    blob = hc.simple().build()
    n = _resolve_length(value, blob)
    p = put(tmp_path, n.to_bytes(8, "little") + blob[8:])
    if n < 2:
        rejects(p, FormatError, f"header length {n}", "too small")
    elif n in (7, 8):  # the header is cut inside the JSON
        rejects(p, FormatError, "header is not valid JSON", "char")
    elif label == "N-1":  # JSON still parses (trailing pad) but data moves by one byte
        rejects(p, FormatError, "unaccounted bytes")
    elif label == "N+1":  # the first data byte (0x00) joins the JSON text
        rejects(p, FormatError, "header is not valid JSON")
    elif n > MAX_HEADER:
        rejects(p, FormatError, f"header length {n}", "cap")
    else:
        rejects(p, FormatError, f"header length {n}", "runs past the end")


def test_header_length_without_json(tmp_path: Path) -> None:
    rejects(put(tmp_path, (8).to_bytes(8, "little")), FormatError, "header length 8", "past")
    blob = (8).to_bytes(8, "little") + b" " * 8
    rejects(put(tmp_path, blob), FormatError, "header must start with '{'")


def test_smallest_header_is_accepted(tmp_path: Path) -> None:
    # The accepting side of the boundary: N = 2, "{}", no tensors, no manifest.
    assert satchel.load(put(tmp_path, (2).to_bytes(8, "little") + b"{}")) == {}


@pytest.mark.parametrize(
    "bad",
    [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80"],
    ids=["ff", "overlong", "utf8-surrogate", "cut-sequence", "continuation"],
)
def test_non_utf8_header(tmp_path: Path, bad: bytes) -> None:
    body = b'{"a' + bad + b'":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}'
    rejects(put(tmp_path, hc.frame(body)), FormatError, "header is not valid UTF-8", "byte 3")


def test_lone_surrogate_in_manifest(tmp_path: Path) -> None:
    # JSON may spell a lone surrogate as an escape; the header is valid UTF-8, the string is not.
    spec = hc.simple()
    text = spec.manifest_text().replace('"metadata":{}', '"metadata":{"k":"\\ud800"}')
    spec.user_metadata = {"k": "\ud800"}
    rejects(put(tmp_path, spec.build(manifest_text=text)), FormatError, "surrogate")
    body = b'{"__metadata__":{"satchel":"\\ud800","satchel.xxh3":"0000000000000000"}}'
    rejects(put(tmp_path, hc.frame(body)), FormatError, "surrogate")


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":',
        b'{"a":1,}',
        b"{'a':1}",
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":-Infinity}',
        b'{"a":{}} x',
        b'{"a":{}}\x00\x00',
        b'{"a":"\x01"}',
        b'{"a":"\\x41"}',
        b'{"a":1' + b"9" * 5000 + b"}",
    ],
    ids=[
        "cut",
        "trailing-comma",
        "single-quotes",
        "nan",
        "inf",
        "-inf",
        "extra-data",
        "nul-padding",
        "control-char",
        "bad-escape",
        "5000-digit-int",
    ],
)
def test_invalid_json(tmp_path: Path, body: bytes) -> None:
    rejects(put(tmp_path, hc.frame(body)), FormatError, "header is not valid JSON")


# -- H6-H17: schema -------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"[]", b'"x"', b"1", b"null", b"true", b"[{}]"])
def test_header_not_an_object(tmp_path: Path, body: bytes) -> None:
    rejects(put(tmp_path, hc.frame(body)), FormatError, "header must start with '{'")


@pytest.mark.parametrize(
    "spec_value",
    [
        1,
        None,
        [],
        "F64",
        {"dtype": "F64", "shape": [4]},
        {"shape": [4], "data_offsets": [0, 32]},
        {"dtype": "F64", "data_offsets": [0, 32]},
        {"dtype": "F64", "shape": [4], "data_offsets": [0, 32], "extra": 1},
    ],
    ids=["int", "null", "list", "string", "no-offsets", "no-dtype", "no-shape", "extra-field"],
)
def test_entry_fields(tmp_path: Path, spec_value: Any) -> None:
    spec = hc.simple()
    spec.header["a"] = spec_value
    rejects(put(tmp_path, spec.build()), FormatError, "tensor 'a'", "dtype, shape, data_offsets")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda m: m.pop("root"), "manifest fields"),
        (lambda m: m.pop("stored"), "manifest fields"),
        (lambda m: m.update(evil=1), "manifest fields"),
        (lambda m: m.update(stored=[]), "'stored'"),
        (lambda m: m.update(leaves={}), "'leaves'"),
        (lambda m: m.update(metadata={"k": 1}), "'metadata'"),
        (lambda m: m.update(metadata=[]), "'metadata'"),
        (lambda m: m["stored"]["a"].pop("xxh3"), "stored['a']"),
        (lambda m: m["stored"]["a"].update(xxh3="ABCDEF0123456789"), "stored['a'].xxh3"),
        (lambda m: m["stored"]["a"].update(xxh3="0123456789abcde"), "stored['a'].xxh3"),
        (lambda m: m["stored"]["a"].update(xxh3=12345), "stored['a'].xxh3"),
        (lambda m: m["stored"]["a"].update(dtype="float128"), "stored['a'].dtype"),
        (lambda m: m["stored"]["a"].update(shape=[4.0]), "stored['a'].shape"),
        (lambda m: m["stored"].update(a=[]), "stored['a']"),
    ],
    ids=[
        "no-root",
        "no-stored",
        "extra-field",
        "stored-list",
        "leaves-object",
        "metadata-int",
        "metadata-list",
        "no-xxh3",
        "xxh3-upper",
        "xxh3-short",
        "xxh3-int",
        "stored-dtype",
        "stored-shape-float",
        "stored-list-record",
    ],
)
def test_manifest_fields(tmp_path: Path, edit: Any, needle: str) -> None:
    spec = hc.simple()
    assert spec.manifest is not None
    edit(spec.manifest)
    rejects(put(tmp_path, spec.build()), FormatError, "manifest", needle)


@pytest.mark.parametrize("version", [2, 0, "1", None, [1], True, 1.0])
def test_manifest_version(tmp_path: Path, version: Any) -> None:
    # SPEC 3.3: exactly the integer 1. ``True == 1.0 == 1`` in Python, so a plain ``!=`` lets
    # both through.
    spec = hc.simple()
    assert spec.manifest is not None
    spec.manifest["version"] = version
    rejects(put(tmp_path, spec.build()), FormatError, "version")


@pytest.mark.parametrize(
    ("fieldname", "value"),
    [("framework", []), ("framework", {}), ("kind", []), ("kind", {"a": 1})],
    ids=["framework-list", "framework-object", "kind-list", "kind-object"],
)
def test_manifest_field_types_unhashable(tmp_path: Path, fieldname: str, value: Any) -> None:
    spec = hc.simple()
    assert spec.manifest is not None
    spec.manifest["leaves"][0][fieldname] = value
    rejects(put(tmp_path, spec.build()), FormatError, "leaves[0]", fieldname)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda lf: lf.pop("data"), "leaves[0]"),
        (lambda lf: lf.update(data="zzz"), "leaves[0].data"),
        (lambda lf: lf.update(data=0), "leaves[0].data"),
        (lambda lf: lf.update(framework="jax"), "leaves[0].framework"),
        (lambda lf: lf.update(kind="module"), "leaves[0].kind"),
        (lambda lf: lf.update(dtype="float32"), "whole-tensor leaf must match"),
        (lambda lf: lf.update(shape=[2, 2]), "whole-tensor leaf must match"),
        (lambda lf: lf.update(shape=[-4]), "leaves[0].shape"),
        (lambda lf: lf.update(requires_grad="yes"), "leaves[0].requires_grad"),
        (lambda lf: lf.update(offset=0), "both offset and strides"),
        (lambda lf: lf.update(strides=[1]), "both offset and strides"),
        (lambda lf: lf.update(offset=0, strides=[1, 1]), "leaves[0].strides has 2 entries"),
        (lambda lf: lf.update(offset=0, strides=[1.0]), "leaves[0].strides"),
        (lambda lf: lf.update(offset=0, strides=[True]), "leaves[0].strides"),
        (lambda lf: lf.update(offset=-8, strides=[1]), "leaves[0].offset"),
        (lambda lf: lf.update(offset=4, strides=[1]), "not a multiple of the item size"),
        (lambda lf: lf.update(extra=1), "leaves[0]"),
        (lambda lf: lf.clear(), "leaves[0]"),
    ],
    ids=[
        "no-data",
        "data-unknown",
        "data-int",
        "framework",
        "kind",
        "whole-dtype",
        "whole-shape",
        "negative-dim",
        "requires-grad-str",
        "offset-only",
        "strides-only",
        "strides-length",
        "strides-float",
        "strides-bool",
        "offset-negative",
        "offset-misaligned",
        "extra-field",
        "empty",
    ],
)
def test_leaf_fields(tmp_path: Path, edit: Any, needle: str) -> None:
    spec = hc.simple()
    assert spec.manifest is not None
    edit(spec.manifest["leaves"][0])
    rejects(put(tmp_path, spec.build()), FormatError, "manifest", needle)


@pytest.mark.parametrize(
    ("root", "needle"),
    [
        ({"$x": 1}, "unknown structure tag"),
        ({"$t": 0, "$tuple": []}, "not a tagged object"),
        ({}, "not a tagged object"),
        ({"$tuple": {}}, "'$tuple' must hold a list"),
        ({"$float": "NaN"}, "'$float'"),
        ({"$float": 1.5}, "'$float'"),
        ({"$dict": {}}, "must hold a list of pairs"),
        ({"$dict": [["a"]]}, "[key, value] pairs"),
        ({"$dict": [["a", 1, 2]]}, "[key, value] pairs"),
        ({"$dict": [[True, 1]]}, "dict key True"),
        ({"$dict": [[1.5, 1]]}, "dict key 1.5"),
        ({"$dict": [[None, 1]]}, "dict key None"),
        ({"$odict": [["a", 1], ["a", 2]]}, "dict key 'a' appears twice"),
        ({"$dict": [[1, 1], [1, 2]]}, "dict key 1 appears twice"),
    ],
    ids=[
        "unknown-tag",
        "two-keys",
        "empty-object",
        "tuple-object",
        "float-NaN",
        "float-number",
        "dict-object",
        "pair-short",
        "pair-long",
        "key-bool",
        "key-float",
        "key-null",
        "odict-duplicate",
        "dict-duplicate-int",
    ],
)
def test_root_nodes(tmp_path: Path, root: Any, needle: str) -> None:
    spec = hc.simple()
    assert spec.manifest is not None
    spec.manifest["root"] = root
    rejects(put(tmp_path, spec.build()), FormatError, "manifest field 'root'", needle)


@pytest.mark.parametrize("literal", ["1e400", "-1e400"])
def test_root_numbers_are_finite(tmp_path: Path, literal: str) -> None:
    # SPEC 4.1: finite numbers stand for themselves; Python's json turns 1e400 into inf, which
    # the format can only spell {"$float": "inf"}. Accepting it is a second spelling of inf.
    spec = hc.simple()
    text = spec.manifest_text().replace('"root":{', f'"root":[{literal},{{', 1)
    text = text.replace(',"leaves"', '],"leaves"', 1)
    json.loads(text)  # still valid JSON
    rejects(put(tmp_path, spec.build(manifest_text=text)), FormatError, "root")


def _rename_stored_b(spec: hc.Spec) -> None:
    assert spec.manifest is not None
    spec.manifest["stored"]["c"] = spec.manifest["stored"].pop("b")
    spec.manifest["leaves"][1]["data"] = "c"


@pytest.mark.parametrize(
    ("edit", "cls", "needle"),
    [
        (lambda s: s.header["a"].update(dtype="I64"), FormatError, "tensor 'a' is I64[4]"),
        (lambda s: s.header["a"].update(shape=[2, 2]), FormatError, "tensor 'a' is F64[2, 2]"),
        (lambda s: s.header["b"].update(dtype="F32"), FormatError, "tensor 'b' is F32[2, 3]"),
        (_rename_stored_b, FormatError, "only in header: ['b'], only in manifest: ['c']"),
        (lambda s: s.user_metadata.update(k="v"), FormatError, "metadata"),
        (lambda s: s.manifest["metadata"].update(k="v"), FormatError, "metadata"),
        (lambda s: s.header["a"].update(shape=[0]), FormatError, "needs 0 bytes"),
    ],
    ids=["dtype", "shape", "dtype-same-size", "names", "meta-header", "meta-manifest", "offs"],
)
def test_manifest_contradicts_header(tmp_path: Path, edit: Any, cls: Any, needle: str) -> None:
    spec = hc.simple()
    edit(spec)
    rejects(put(tmp_path, spec.build()), cls, needle)


def test_torch_scalar_leaf_with_elements(tmp_path: Path) -> None:
    # kind "scalar" is a 0-d value: a torch leaf with 4 elements cannot be one.
    import torch  # noqa: F401

    spec = hc.simple(fw="torch")
    assert spec.manifest is not None
    spec.manifest["leaves"][0]["kind"] = "scalar"
    p = put(tmp_path, spec.build())
    with pytest.raises(satchel.SatchelError) as info:
        satchel.load(p)
    assert type(info.value) is FormatError
    assert str(p) in str(info.value)


def test_torch_integer_parameter_requires_grad(tmp_path: Path) -> None:
    # An int32 Parameter cannot require grad; the file must be refused as a FormatError.
    import torch  # noqa: F401

    spec = hc.simple(fw="torch")
    assert spec.manifest is not None
    spec.manifest["leaves"][1].update(kind="parameter", requires_grad=True)
    p = put(tmp_path, spec.build())
    with pytest.raises(satchel.SatchelError) as info:
        satchel.load(p)
    assert type(info.value) is FormatError
    assert str(p) in str(info.value)


_ENTRY_A = '{"dtype":"F64","shape":[4],"data_offsets":[0,32]}'
_ENTRY_B = '{"dtype":"I32","shape":[2,3],"data_offsets":[32,56]}'


@pytest.mark.parametrize(
    ("which", "needle"),
    [
        ("top", "header has the key 'a' twice"),
        ("entry", "header has the key 'dtype' twice"),
        ("metadata", "header has the key 'k' twice"),
        ("manifest", "satchel manifest has the key 'version' twice"),
        ("manifest-stored", "satchel manifest has the key 'a' twice"),
        ("manifest-leaf", "satchel manifest has the key 'data' twice"),
    ],
)
def test_duplicate_keys(tmp_path: Path, which: str, needle: str) -> None:
    data = hc.A.tobytes() + hc.B.tobytes()
    if which == "top":  # the 118-byte auditor/loader differential: Python json keeps the last
        body = f'{{"a":{{"dtype":"U8","shape":[32],"data_offsets":[0,32]}},"a":{_ENTRY_A},'
        body += f'"b":{_ENTRY_B}}}'
        blob = hc.frame(body.encode(), data)
    elif which == "entry":
        body = '{"a":{"dtype":"U8","dtype":"F64","shape":[4],"data_offsets":[0,32]},'
        body += f'"b":{_ENTRY_B}}}'
        blob = hc.frame(body.encode(), data)
    elif which == "metadata":
        body = f'{{"__metadata__":{{"k":"1","k":"2"}},"a":{_ENTRY_A},"b":{_ENTRY_B}}}'
        blob = hc.frame(body.encode(), data)
    else:
        spec = hc.simple()
        text = spec.manifest_text()
        if which == "manifest":
            text = text.replace('{"version":1,', '{"version":2,"version":1,', 1)
        elif which == "manifest-stored":
            stored_a = json.dumps(spec.manifest["stored"]["a"], separators=(",", ":"))
            text = text.replace('"stored":{', f'"stored":{{"a":{stored_a},', 1)
        else:
            text = text.replace('"data":"a"', '"data":"b","data":"a"', 1)
        blob = spec.build(manifest_text=text)
    rejects(put(tmp_path, blob), FormatError, needle)


@pytest.mark.parametrize(
    "meta",
    [{"k": 1}, {"k": None}, {"k": ["v"]}, {"k": {"x": "y"}}, {"k": True}, [], "meta", None],
    ids=["int", "null", "list", "object", "bool", "meta-list", "meta-string", "meta-null"],
)
def test_metadata_must_map_strings_to_strings(tmp_path: Path, meta: Any) -> None:
    body = hc.dumps({"__metadata__": meta, "a": hc.entry("U8", [1], 0, 1)})
    rejects(put(tmp_path, hc.frame(body, b"\x00")), FormatError, "'__metadata__'")


@pytest.mark.parametrize(
    "dtype",
    ["F4", "f64", "", "C128", "complex128", "float64", "F64 ", "U8\x00", None, 3, -1, ["F64"]],
)
def test_unknown_dtype(tmp_path: Path, dtype: Any) -> None:
    spec = hc.simple()
    spec.header["a"]["dtype"] = dtype
    rejects(put(tmp_path, spec.build()), FormatError, "tensor 'a' has unknown dtype")


@pytest.mark.parametrize(
    ("offs_a", "offs_b", "extra", "needle"),
    [
        ((0, 32), (40, 64), 8, "'b' data_offsets [40, 64] leaves a hole"),  # gap of 8 bytes
        ((8, 40), (40, 64), 8, "'a' data_offsets [8, 40] leaves a hole"),  # first not at 0
        ((0, 32), (24, 48), 0, "'b' data_offsets [24, 48] overlaps"),
        ((0, 32), (32, 56), 8, "followed by unaccounted bytes"),  # hole at the end
        ((0, 32), (32, 56), -8, "truncated"),
        ((32, 0), (32, 56), 0, "'a' data_offsets end 0 is before start 32"),
    ],
    ids=["gap", "not-at-0", "overlap", "hole-at-end", "short", "end-before-start"],
)
def test_offsets_must_tile(
    tmp_path: Path, offs_a: Any, offs_b: Any, extra: int, needle: str
) -> None:
    spec = hc.simple()
    spec.header["a"]["data_offsets"] = list(offs_a)
    spec.header["b"]["data_offsets"] = list(offs_b)
    spec.data = spec.data + b"\x00" * extra if extra >= 0 else spec.data[:extra]
    if needle.endswith("before start 32"):
        spec.header["a"]["shape"] = [0]
    rejects(put(tmp_path, spec.build()), FormatError, needle)


def test_swapped_offsets_are_caught_by_checksums(tmp_path: Path) -> None:
    # Both spans still tile the data exactly; only the checksums can tell the bytes moved.
    a, b = b"\x01\x02\x03\x04", b"\x05\x06\x07\x08"
    spec = hc.Spec({"a": hc.entry("U8", [4], 4, 8), "b": hc.entry("U8", [4], 0, 4)}, None, a + b)
    spec.manifest = {
        "version": 1,
        "root": [{"$t": 0}, {"$t": 1}],
        "leaves": [
            hc.leaf("numpy", "tensor", "uint8", [4], "a"),
            hc.leaf("numpy", "tensor", "uint8", [4], "b"),
        ],
        "stored": {
            "a": {"dtype": "uint8", "shape": [4], "xxh3": hc.xxh(a)},
            "b": {"dtype": "uint8", "shape": [4], "xxh3": hc.xxh(b)},
        },
        "metadata": {},
    }
    rejects(put(tmp_path, spec.build()), IntegrityError, "tensor 'a'", "checksum")


def test_two_names_one_span(tmp_path: Path) -> None:
    # Tied weights must be stored once; two header names over one span is an overlap.
    body = hc.dumps({"w": hc.entry("F32", [2], 0, 8), "v": hc.entry("F32", [2], 0, 8)})
    rejects(put(tmp_path, hc.frame(body, b"\x00" * 8)), FormatError, "data_offsets [0, 8]")


def test_zero_size_tensor_offset_policy(tmp_path: Path) -> None:
    # SPEC 2.6: a zero-size tensor MAY share an offset with its neighbour ...
    for start in (0, 8):
        body = hc.dumps({"w": hc.entry("F32", [2], 0, 8), "z": hc.entry("F32", [0], start, start)})
        out = satchel.load(put(tmp_path, hc.frame(body, b"\x00" * 8)))
        assert out["z"].shape == (0,) and out["w"].tolist() == [0.0, 0.0]
    # ... but not sit inside another tensor's span, nor past the end.
    for start, needle in ((4, "overlaps"), (12, "leaves a hole")):
        body = hc.dumps({"w": hc.entry("F32", [2], 0, 8), "z": hc.entry("F32", [0], start, start)})
        rejects(put(tmp_path, hc.frame(body, b"\x00" * 8)), FormatError, "'z'", needle)


@pytest.mark.parametrize(
    "tail",
    [b"PK\x03\x04" + b"\x00" * 26, b"\x80\x02cos\nsystem\nq\x00.", b"\x00", b" "],
    ids=["zip", "pickle", "one-nul", "one-space"],
)
def test_trailing_bytes(tmp_path: Path, tail: bytes) -> None:
    rejects(put(tmp_path, hc.simple().build() + tail), FormatError, "unaccounted bytes")
    rejects(put(tmp_path, hc.frame(b"{}", tail)), FormatError, "unaccounted bytes")


def test_span_must_match_shape(tmp_path: Path) -> None:
    body = hc.dumps({"w": hc.entry("F32", [1000, 1000], 0, 4)})
    rejects(
        put(tmp_path, hc.frame(body, b"\x00" * 4)),
        FormatError,
        "tensor 'w' shape [1000, 1000] of F32 needs 4000000 bytes but data_offsets span 4",
    )


@pytest.mark.parametrize(
    ("shape", "offsets", "needle"),
    [
        ([2, 18446744073709551614], [0, 4], "shape holds 18446744073709551614"),
        ([2, 9223372036854775807], [0, 4], "needs 18446744073709551614 bytes"),
        ([2**32, 2**32], [0, 0], "needs 18446744073709551616 bytes"),  # wraps to 0 in u64
        ([2**62, 4], [0, 0], "needs"),
        ([3, 2**61 + 1], [0, 8], "needs"),
    ],
    ids=["safetensors-test", "i64-max", "wrap-to-0", "2^62x4", "wrap-to-small"],
)
def test_shape_product_overflow(tmp_path: Path, shape: Any, offsets: Any, needle: str) -> None:
    body = hc.dumps({"w": hc.entry("U8", shape, *offsets)})
    rejects(put(tmp_path, hc.frame(body, b"\x00" * offsets[1])), FormatError, "tensor 'w'", needle)


@pytest.mark.parametrize(
    ("fieldname", "value"),
    [
        ("shape", [-4]),
        ("shape", [4.0]),
        ("shape", [1e3]),
        ("shape", [True, 4]),
        ("shape", [2**64]),
        ("shape", [10**30]),
        ("shape", ["4"]),
        ("shape", [None]),
        ("shape", 4),
        ("shape", {"0": 4}),
        ("data_offsets", [-1, 31]),
        ("data_offsets", [0.0, 32]),
        ("data_offsets", [0, True]),
        ("data_offsets", [0, 2**64 + 32]),
        ("data_offsets", [0]),
        ("data_offsets", [0, 32, 64]),
        ("data_offsets", "0,32"),
    ],
)
def test_integer_fields_are_integers_in_range(tmp_path: Path, fieldname: str, value: Any) -> None:
    spec = hc.simple()
    spec.header["a"][fieldname] = value
    rejects(put(tmp_path, spec.build()), FormatError, f"tensor 'a' {fieldname}")


@pytest.mark.parametrize("dtype", ["F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "I4", "U1"])
def test_sub_byte_dtypes_are_unknown(tmp_path: Path, dtype: str) -> None:
    # satchel has no sub-byte dtype, so the misaligned-slice case cannot arise: the name is refused.
    body = hc.dumps({"w": hc.entry(dtype, [3], 0, 1)})
    rejects(put(tmp_path, hc.frame(body, b"\x00")), FormatError, "unknown dtype")


# -- H18-H20 and N1-N4: counts, sizes, depth ------------------------------------------------------


def _many_entries_blob(n: int) -> bytes:
    # The cheapest possible entries: the cap is checked before any entry is validated.
    return hc.frame(b"{" + b",".join(b'"%d":0' % i for i in range(n)) + b"}")


def test_entry_cap_logic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(header_mod, "MAX_ENTRIES", 3)
    rejects(put(tmp_path, _many_entries_blob(4)), FormatError, "declares 4 entries, cap is 3")


def test_entry_cap(tmp_path: Path) -> None:
    p = put(tmp_path, _many_entries_blob(MAX_ENTRIES + 1))
    try:
        report = hc.run_confined([(p, {})])
    finally:
        p.unlink()
    assert "crash" not in report, report
    (res,) = report["results"]
    assert res["outcome"] == "rejected" and res["error"] == "FormatError", res
    assert f"declares {MAX_ENTRIES + 1} entries, cap is {MAX_ENTRIES}" in res["message"]
    assert report["max_rss"] < 512 << 20, report["max_rss"]
    assert res["seconds"] < 20, res  # ~1 s on an idle 2-core VM


def _plain_zero_size(n: int) -> bytes:
    return hc.frame(hc.dumps({f"t{i}": hc.entry("U8", [0], 0, 0) for i in range(n)}))


def test_many_entries_load_in_linear_time(tmp_path: Path) -> None:
    # 40,000 zero-size tensors (2 MB of header) load in ~0.5 s when linear, ~90 s when
    # quadratic; at the 1,000,000-entry cap quadratic means a hang of hours.
    p = put(tmp_path, _plain_zero_size(40_000))
    report = hc.run_confined([(p, {})], timeout=15)
    assert "crash" not in report, f"40,000 zero-size tensors: {report['crash']}"
    (res,) = report["results"]
    assert res["outcome"] == "accepted", res


def test_many_tensors_satchel_file_load_in_linear_time(tmp_path: Path) -> None:
    p = tmp_path / "many.satchel"
    satchel.save({f"t{i}": np.full(2, i, dtype=np.float32) for i in range(40_000)}, p)
    # A genuine file of 40,000 small tensors: ~1.5 s when linear, ~40 s when quadratic.
    report = hc.run_confined([(p, {})], timeout=15)
    assert "crash" not in report, f"40,000 small tensors: {report['crash']}"
    (res,) = report["results"]
    assert res["outcome"] == "accepted", res


def test_clashing_paths_open_in_linear_time(tmp_path: Path) -> None:
    # Keys 1 and "1" both spell the path "1"; nested 15 deep, 32,768 leaf references share one
    # dotted path. Display names are made unique with "#k" suffixes: that must not be quadratic
    # (1.2 MB file: ~0.3 s when linear, ~70 s when quadratic).
    spec = hc.simple()
    assert spec.manifest is not None
    node: Any = {"$t": 0}
    for _ in range(15):
        node = {"$dict": [[1, node], ["1", node]]}
    spec.manifest["root"] = node
    p = put(tmp_path, spec.build())
    assert p.stat().st_size < 2 << 20
    report = hc.run_confined([(p, {})], timeout=15)
    assert "crash" not in report, f"a {p.stat().st_size}-byte file: {report['crash']}"
    (res,) = report["results"]
    assert res["outcome"] == "accepted", res


def test_long_tensor_name(tmp_path: Path) -> None:
    name = "n" * 5_000_000
    body = hc.dumps({name: hc.entry("U8", [1], 0, 1)})
    p = put(tmp_path, hc.frame(body, b"\x07"))
    report = hc.run_confined([(p, {})], timeout=20)
    assert "crash" not in report, report
    (res,) = report["results"]
    assert res["outcome"] == "accepted" and res["seconds"] < 10, res


def test_header_parse_memory_is_bounded(tmp_path: Path) -> None:
    # A header at the 100 MB cap made of empty JSON objects: every 3 bytes become a Python dict
    # (~24x amplification). Loading must refuse it with a FormatError under 1 GiB of address
    # space, not die of MemoryError.
    body = b'{"a":[' + b"{}," * (MAX_HEADER // 3 - 3) + b"{}]}"
    assert len(body) <= MAX_HEADER
    p = put(tmp_path, hc.frame(body, pad=False))
    del body
    try:
        report = hc.run_confined([(p, {})], timeout=60)
    finally:
        p.unlink()  # 100 MB: do not leave it in pytest's kept temp folders
    assert "crash" not in report, report
    (res,) = report["results"]
    assert res["outcome"] == "rejected" and res["error"] == "FormatError", res


def _deep_cases() -> dict[str, bytes]:
    deep = 100_000
    spec = hc.simple()
    text = spec.manifest_text()
    return {
        "header-array": hc.frame(b'{"a":' + b"[" * deep + b"]" * deep + b"}"),
        "header-object": hc.frame(b'{"a":' + b'{"a":' * deep + b"0" + b"}" * deep + b"}"),
        "metadata": hc.frame(b'{"__metadata__":{"k":' + b"[" * deep + b"]" * deep + b"}}"),
        "manifest-root": spec.build(
            manifest_text=text.replace(
                '"root":{"$dict":[["a",{"$t":0}],["b",{"$t":1}]]}',
                '"root":' + "[" * deep + "]" * deep,
            )
        ),
    }


@pytest.mark.parametrize(
    ("root", "needle"),
    [
        ("list65", "nested deeper than 64"),
        ("tuple65", "nested deeper than 64"),
        ("dict65", "nested deeper than 64"),
        ("deep", "nested too deeply"),
        ("header-array", "header is nested too deeply"),
        ("header-object", "header is nested too deeply"),
        ("metadata", "header is nested too deeply"),
        ("manifest-root", "satchel manifest is nested too deeply"),
    ],
)
def test_deep_nesting(tmp_path: Path, root: str, needle: str) -> None:
    deep = _deep_cases()
    if root in deep:
        rejects(put(tmp_path, deep[root]), FormatError, needle)
        return
    spec = hc.simple()
    assert spec.manifest is not None
    if root == "deep":  # 20,000 levels: beyond Python's recursion limit while parsing
        text = spec.manifest_text().replace(
            '"root":{"$dict":[["a",{"$t":0}],["b",{"$t":1}]]}',
            '"root":' + "[" * 20_000 + "]" * 20_000,
        )
        rejects(put(tmp_path, spec.build(manifest_text=text)), FormatError, needle)
        return
    node: Any = {"$t": 0}
    for _ in range(65):  # parses fine, one level past SPEC 4.6
        if root == "list65":
            node = [node]
        elif root == "tuple65":
            node = {"$tuple": [node]}
        else:
            node = {"$dict": [["k", node]]}
    spec.manifest["root"] = node
    rejects(put(tmp_path, spec.build()), FormatError, "manifest field 'root'", needle)


def test_sixty_four_levels_load(tmp_path: Path) -> None:
    spec = hc.simple()
    assert spec.manifest is not None
    node: Any = {"$t": 0}
    for _ in range(64):
        node = [node]
    spec.manifest["root"] = node
    out = satchel.load(put(tmp_path, spec.build()))
    for _ in range(64):
        out = out[0]
    assert out.tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "lead", [b" ", b"\n", b"\t", b"\xef\xbb\xbf"], ids=["sp", "nl", "tab", "bom"]
)
def test_leading_whitespace_rejected_trailing_accepted(tmp_path: Path, lead: bytes) -> None:
    body = hc.simple().header_body()
    rejects(put(tmp_path, hc.frame(lead + body, hc.simple().data)), FormatError, "start with '{'")
    # SPEC 1.4: trailing whitespace of any JSON kind is accepted.
    ok = hc.frame(body + b"\n\t\r ", hc.simple().data)
    assert satchel.load(put(tmp_path, ok))["a"].tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("ref", [2, -1, True, "0", 1.5, None, 2**64])
def test_leaf_references_out_of_range(tmp_path: Path, ref: Any) -> None:
    spec = hc.simple()
    assert spec.manifest is not None
    spec.manifest["root"] = [{"$t": 0}, {"$t": ref}]
    rejects(put(tmp_path, spec.build()), FormatError, "leaf reference", "not in 0..1")


@pytest.mark.parametrize("where", ["header", "stored", "leaf"])
def test_too_many_dims(tmp_path: Path, where: str) -> None:
    spec = hc.simple()
    assert spec.manifest is not None
    shape = [1] * 65
    if where == "header":
        spec.header["a"]["shape"] = shape
        spec.header["a"]["data_offsets"] = [0, 8]
        rejects(put(tmp_path, spec.build()), FormatError, "tensor 'a' shape", "at most 64")
    elif where == "stored":
        spec.manifest["stored"]["a"]["shape"] = shape
        rejects(put(tmp_path, spec.build()), FormatError, "stored['a'].shape", "at most 64")
    else:
        spec.manifest["leaves"][0].update(shape=shape, offset=0, strides=[0] * 65)
        rejects(put(tmp_path, spec.build()), FormatError, "leaves[0].shape", "at most 64")


def test_sixty_four_dims_load(tmp_path: Path) -> None:
    body = hc.dumps({"w": hc.entry("F32", [1] * 63 + [2], 0, 8)})
    out = satchel.load(put(tmp_path, hc.frame(body, np.array([1, 2], np.float32).tobytes())))
    assert out["w"].shape == (1,) * 63 + (2,)


@pytest.mark.parametrize(
    "shape",
    [[2**42 + 1, 2**22], [2**21, 2**21, 2**21, 2**2], [65536] * 4, [3] * 41],
    ids=["llama-cve", "three-way", "4x65536", "3^41"],
)
def test_dim_product_wraps(tmp_path: Path, shape: list[int]) -> None:
    # Products that wrap a u64 (or an i64) to a small number must not match a small span.
    for wrapped in {np.prod(np.array(shape, dtype=np.uint64)).item() % 2**64 * 4 % 2**64, 0, 4}:
        if wrapped > 1 << 20:
            continue
        body = hc.dumps({"w": hc.entry("F32", shape, 0, wrapped)})
        rejects(put(tmp_path, hc.frame(body, b"\x00" * wrapped)), FormatError, "tensor 'w' shape")


@pytest.mark.parametrize("framework", ["numpy", "torch"])
@pytest.mark.parametrize(
    "shape", [[2**62, 2**62, 0], [0, 2**63 - 1, 2**63 - 1], [2**40] * 2 + [0]], ids=str
)
def test_zero_size_tensor_with_huge_dims(tmp_path: Path, framework: str, shape: list[int]) -> None:
    # SPEC 2.5 only bounds each dim and the byte span (0 here); the element count of the other
    # dims overflows every array library. Either refuse the file as a FormatError or return an
    # empty array of exactly that shape; never leak a ValueError/RuntimeError.
    if framework == "torch":
        import torch  # noqa: F401
    body = hc.dumps({"w": hc.entry("F64", shape, 0, 0)})
    p = put(tmp_path, hc.frame(body))
    try:
        out = satchel.load(p, framework=framework)
    except satchel.SatchelError as e:
        assert type(e) is FormatError and str(p) in str(e) and "'w'" in str(e), e
    else:
        assert tuple(out["w"].shape) == tuple(shape)


def test_offset_accumulation(tmp_path: Path) -> None:
    body = hc.dumps(
        {
            "a": hc.entry("U8", [2**62], 0, 2**62),
            "b": hc.entry("U8", [2**62 - 1], 2**62, 2**63 - 1),
            "c": hc.entry("U8", [1], 2**63 - 1, 2**63),
        }
    )
    rejects(put(tmp_path, hc.frame(body, b"\x00")), FormatError, "tensor 'c'", "2^63")
    body = hc.dumps(
        {"a": hc.entry("U8", [2**62], 0, 2**62), "b": hc.entry("U8", [1], 2**62, 2**62 + 1)}
    )
    rejects(put(tmp_path, hc.frame(body, b"\x00")), FormatError, "the file is truncated")


# -- views (SPEC 3.6) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "strides", "offset", "needle"),
    [
        ([9], [1], 0, "reaches bytes [0, 72)"),
        ([8], [1], 8, "reaches bytes [8, 72)"),
        ([2], [-1], 0, "reaches bytes [-8, 8)"),
        ([2, 2], [4, 5], 0, "outside its stored tensor"),
        ([3], [4], 0, "outside its stored tensor"),
        ([2], [2**62], 0, "outside its stored tensor"),
        ([2], [-(2**62)], 2**62, "outside its stored tensor"),
        ([1], [1], 2**63 - 8, "outside its stored tensor"),
        ([0], [1], 72, "past the stored tensor's end"),
        ([1], [1], 2**63, "leaves[1].offset"),
        ([2], [2**63], 0, "leaves[1].strides"),
    ],
    ids=[
        "one-past",
        "offset-push",
        "negative-before",
        "2d-corner",
        "stride-jump",
        "huge-stride",
        "huge-negative",
        "huge-offset",
        "empty-past-end",
        "offset-2^63",
        "stride-2^63",
    ],
)
def test_view_outside_stored_tensor(
    tmp_path: Path, shape: list[int], strides: list[int], offset: int, needle: str
) -> None:
    p = put(tmp_path, hc.view_spec(shape, strides, offset).build())
    rejects(p, FormatError, "manifest leaves[1]", needle)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
@pytest.mark.parametrize(
    ("shape", "strides"),
    [([1], [2**63 - 1]), ([1], [-(2**63)]), ([0], [2**63 - 1]), ([2, 1], [1, 2**62])],
    ids=["size1-max", "size1-min", "size0-max", "inner-size1"],
)
def test_view_huge_strides_on_short_dims(
    tmp_path: Path, framework: str, shape: list[int], strides: list[int]
) -> None:
    # A stride on a dim of size 0 or 1 is never followed, so SPEC 3.6's bounds check passes it;
    # the array libraries still refuse strides whose byte value leaves int64.
    if framework == "torch":
        import torch  # noqa: F401
    p = put(tmp_path, hc.view_spec(shape, strides, 0, fw=framework).build())
    try:
        out = satchel.load(p)
    except satchel.SatchelError as e:
        assert type(e) is FormatError and str(p) in str(e) and "leaves[1]" in str(e), e
    else:
        assert tuple(out[1].shape) == tuple(shape)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
@pytest.mark.parametrize(
    ("shape", "strides"),
    [([2**62], [0]), ([2**31, 2**31], [0, 0]), ([2**61, 2], [0, 1]), ([2**63 - 1, 3], [0, 1])],
    ids=["2^62", "2^31x2^31", "2^61x2", "2^63-1x3"],
)
def test_view_broadcast_beyond_int64(
    tmp_path: Path, framework: str, shape: list[int], strides: list[int]
) -> None:
    # Stride-0 views (torch ``expand``, ``np.broadcast_to``) reach one element, so SPEC 3.6's
    # bounds check passes any shape; past 2^63 bytes of *view* the array libraries refuse.
    if framework == "torch":
        import torch  # noqa: F401
    p = put(tmp_path, hc.view_spec(shape, strides, 0, fw=framework).build())
    try:
        out = satchel.load(p)
    except satchel.SatchelError as e:
        assert type(e) is FormatError and str(p) in str(e) and "leaves[1]" in str(e), e
    else:
        assert tuple(out[1].shape) == tuple(shape)


def test_view_negative_strides_torch(tmp_path: Path) -> None:
    # SPEC 3.6 allows negative strides; torch cannot express them. A torch leaf with one must be
    # refused cleanly (or copied), not leak a RuntimeError from as_strided.
    import torch  # noqa: F401

    p = put(tmp_path, hc.view_spec([3], [-1], 16, fw="torch").build())
    try:
        out = satchel.load(p)
    except satchel.SatchelError as e:
        assert type(e) is FormatError and str(p) in str(e), e
    else:
        assert out[1].tolist() == [2.0, 1.0, 0.0]


# -- I1-I9: integrity ----------------------------------------------------------------------------


def test_data_bit_flips(tmp_path: Path) -> None:
    # For comparison: safetensors 0.8.0 accepts every such flip and returns the changed values.
    blob = hc.simple().build()
    start = len(blob) - 56
    p = tmp_path / "flip.satchel"
    for bit in range(56 * 8):
        mutated = bytearray(blob)
        mutated[start + bit // 8] ^= 1 << (bit % 8)
        p.write_bytes(mutated)
        name = "'a'" if bit // 8 < 32 else "'b'"
        rejects(p, IntegrityError, f"tensor {name} does not match its checksum")


def test_lazy_open_names_the_damaged_tensor(tmp_path: Path) -> None:
    blob = bytearray(hc.simple().build())
    blob[-1] ^= 0x10  # last byte of 'b'
    p = put(tmp_path, bytes(blob))
    with satchel.open(p) as ck:
        assert ck["a"].tolist() == [0.0, 1.0, 2.0, 3.0]
        with pytest.raises(IntegrityError, match="tensor 'b'"):
            ck["b"]
    assert satchel.load(p, verify=False)["b"][1, 2] == 5 ^ (0x10 << 24)


def test_bit_flip_in_tensor_name(tmp_path: Path) -> None:
    # safetensors 0.8.0 accepts "step" -> "s|ep" as a tensor that was renamed.
    spec = hc.Spec({"step": hc.entry("I64", [], 0, 8)}, None, np.int64(7).tobytes())
    spec.manifest = {
        "version": 1,
        "root": {"$dict": [["step", {"$t": 0}]]},
        "leaves": [hc.leaf("numpy", "tensor", "int64", [], "step")],
        "stored": {"step": {"dtype": "int64", "shape": [], "xxh3": hc.xxh(spec.data)}},
        "metadata": {},
    }
    blob = spec.build()
    assert satchel.load(put(tmp_path, blob))["step"] == 7
    at = blob.index(b'"step":{"dtype"')  # the header key, outside the manifest
    for bit in range(8):
        mutated = bytearray(blob)
        mutated[at + 2] ^= 1 << bit
        p = put(tmp_path, bytes(mutated))
        if 0x20 <= mutated[at + 2] < 0x7F and mutated[at + 2] not in b'"\\':
            rejects(p, FormatError, "header tensors and manifest disagree")
        else:  # the flip broke the JSON (or UTF-8) itself
            rejects(p, FormatError, "header")
    at = blob.index(b'\\"step\\"')  # the manifest's copy of the name
    mutated = bytearray(blob)
    mutated[at + 3] ^= 0x08
    rejects(put(tmp_path, bytes(mutated)), IntegrityError, "manifest does not match its checksum")


def test_same_size_corrupt_file(tmp_path: Path) -> None:
    blob = hc.simple().build()
    rng = random.Random(67)
    head = len(blob) - 56
    corrupt = blob[:head] + bytes(rng.randrange(256) for _ in range(56))
    assert len(corrupt) == len(blob)
    rejects(put(tmp_path, corrupt), IntegrityError, "tensor 'a'", "checksum")


def test_every_truncation_is_refused(tmp_path: Path) -> None:
    blob = hc.simple().build()
    p = tmp_path / "cut.satchel"
    for size in range(len(blob)):
        p.write_bytes(blob[:size])
        rejects(p, FormatError, "truncated")


def test_zero_checksum_is_not_skipped(tmp_path: Path) -> None:
    spec = hc.simple()
    assert spec.manifest is not None
    spec.manifest["stored"]["a"]["xxh3"] = "0" * 16
    rejects(put(tmp_path, spec.build()), IntegrityError, "tensor 'a'", "recorded 0000000000000000")
    body = spec.header_body()
    obj = json.loads(body)
    obj["__metadata__"]["satchel.xxh3"] = "0" * 16
    rejects(put(tmp_path, hc.frame(hc.dumps(obj), spec.data)), IntegrityError, "manifest")
    del obj["__metadata__"]["satchel.xxh3"]  # absent is not "unchecked": it is refused
    rejects(put(tmp_path, hc.frame(hc.dumps(obj), spec.data)), FormatError, "only one of")


def test_wrong_content_same_layout(tmp_path: Path) -> None:
    spec = hc.simple()
    other = (hc.A + 1).tobytes() + hc.B.tobytes()  # another checkpoint of the same model
    blob = spec.build()
    rejects(put(tmp_path, blob[: len(blob) - 56] + other), IntegrityError, "tensor 'a'")


def test_half_written_file(tmp_path: Path) -> None:
    blob = hc.simple().build()
    head = blob[: len(blob) - 56]
    rejects(put(tmp_path, head + b"\x00" * 56), IntegrityError, "checksum")  # preallocated
    rejects(put(tmp_path, head + blob[-56:-20]), FormatError, "truncated")  # cut short
    rejects(put(tmp_path, head), FormatError, "truncated")  # header only


# -- the worst cases, confined --------------------------------------------------------------------


def test_confined_worst_cases(tmp_path: Path) -> None:
    """Huge lengths, shapes and nesting are refused under RLIMIT_AS = 1 GiB, quickly."""
    blob = hc.simple().build()
    jobs: list[tuple[Path, dict[str, Any]]] = []
    for label, value in _length_cases():
        n = _resolve_length(value, blob)
        jobs.append((put(tmp_path, n.to_bytes(8, "little") + blob[8:], f"len-{label}"), {}))
    for i, shape in enumerate(
        [[2, 18446744073709551614], [2, 9223372036854775807], [2**32, 2**32], [2**42 + 1, 2**22]]
    ):
        body = hc.dumps({"w": hc.entry("F32", shape, 0, 4)})
        jobs.append((put(tmp_path, hc.frame(body, b"\x00" * 4), f"shape-{i}"), {}))
        jobs.append((jobs[-1][0], {"mmap": False}))
    for name, deep in _deep_cases().items():
        jobs.append((put(tmp_path, deep, f"deep-{name}"), {}))
    report = hc.run_confined(jobs, limit=1 << 30, timeout=120)
    assert "crash" not in report, report
    bad = [r for r in report["results"] if r["outcome"] != "rejected"]
    assert not bad, bad
    for r in report["results"]:
        assert r["error"] == "FormatError" and r["path"] in r["message"], r
    assert report["max_rss"] < 200 << 20, report["max_rss"]
    times = sorted(r["seconds"] for r in report["results"])
    assert times[-1] < 2.0, times[-1]


def test_catalogue_is_covered() -> None:
    names = set(globals())
    documented = FORMATS_DOC.read_text("utf-8")
    for rule, tests in CATALOGUE.items():
        assert f"**{rule}**" in documented, f"rule {rule} is not in docs/formats.md"
        for t in tests:
            assert t in names, f"rule {rule}: {t} does not exist"
    for t in VIEW_TESTS:
        assert t in names
    assert {f"H{i}" for i in range(1, 21)} <= set(CATALOGUE), "every header rule has a test"
