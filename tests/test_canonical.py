"""A version 1 manifest as satchel spells it is read column by column (SPEC 3.12).

The column path (``_format/canonical.py``) must accept exactly what the record-by-record path
accepts, with the same meaning. Each test parses the same text both ways: what satchel writes
takes the column path and gives the same manifest; every edit of it, by hand (each breaking or
bending one rule) or at random, is either refused by the column path (the general path then
decides) or read the same way by both.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import satchel
from satchel._format.canonical import plain_manifest
from satchel._format.manifest import Manifest, parse_manifest


def manifest_text(path: Path) -> str:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    text: str = json.loads(raw[8 : 8 + n])["__metadata__"]["satchel"]
    return text


def general(text: str) -> Manifest | Exception:
    try:
        return parse_manifest(text, where="m", columns_first=False)
    except satchel.SatchelError as e:
        return e


def same(a: Manifest, b: Manifest) -> None:
    assert a == b
    assert a.flat == b.flat
    assert a.columns == b.columns
    assert list(a.stored) == list(b.stored)


def written(tmp_path: Path) -> tuple[str, str]:
    """Two manifests satchel wrote: a model's parameters with metadata and the module's class
    (its OrderedDict root spelled as a dict, which it reads the same) and a plain dict of
    three dtypes and a 0-d tensor."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    path = tmp_path / "m.satchel"
    satchel.save(model, path, metadata={"epoch": "3", "note": "a:b"})
    state = {"w": torch.ones(2, 3), "i": torch.arange(4, dtype=torch.int16), "s": torch.tensor(2.0)}
    state["n"] = torch.zeros(5, dtype=torch.float64)
    satchel.save(state, tmp_path / "s.satchel")
    model_text = manifest_text(path).replace('"$odict"', '"$dict"', 1)
    return model_text, manifest_text(tmp_path / "s.satchel")


def test_spec_3_12_written_manifests_take_the_column_path(tmp_path: Path) -> None:
    for text in written(tmp_path):
        assert plain_manifest(text) is not None
        fast = parse_manifest(text, where="m")
        slow = general(text)
        assert isinstance(slow, Manifest)
        same(fast, slow)
        # Records built from the columns on demand equal the general path's.
        assert fast.leaves == slow.leaves and fast.stored == slow.stored


def test_spec_3_12_numpy_state_round_trips_through_the_column_path(tmp_path: Path) -> None:
    state = {f"k{i}": np.full((i + 1, 2), i, dtype=np.float32) for i in range(30)}
    path = tmp_path / "np.satchel"
    satchel.save(state, path)
    assert plain_manifest(manifest_text(path)) is not None
    out = satchel.load(path)
    assert list(out) == list(state)
    for k, v in state.items():
        np.testing.assert_array_equal(out[k], v)


# Each edit bends one rule of 3.1-3.7 or 4 (or only the spelling), on the model's manifest.
EDITS: list[tuple[str, str]] = [
    ('{"$t":0}', '{"$t":0,"$t":0}'),  # a key twice in a leaf reference
    ('{"$t":1}', '{"$t":0}'),  # two keys, one leaf
    ('{"$t":1}', '{"$t":-1}'),
    ('{"$t":1}', '{"$t":99}'),
    ('{"$t":1}', '{"$t":1.0}'),
    ('{"$t":1}', '{"$t":true}'),
    ('"shape":[4,3]', '"shape":[4,3.0]'),
    ('"shape":[4,3]', '"shape":[4,true]'),
    ('"shape":[4,3]', '"shape":[4,0]'),
    ('"shape":[4,3]', '"shape":[4,-3]'),
    ('"shape":[4,3]', '"shape":[4,3,1]'),
    ('"shape":[4,3]', '"shape":[4,9223372036854775807]'),
    ('"shape":[4,3]', '"shape":[4,1e400]'),
    ('"shape":[4,3]', '"shape":[4,NaN]'),
    ('"dtype":"float32"', '"dtype":"float31"'),
    ('"dtype":"float32"', '"dtype":"float64"'),
    ('"dtype":"float32"', '"dtype":"float32","dtype":"float32"'),
    ('"framework":"torch"', '"framework":"jax"'),
    ('"framework":"torch"', '"framework":"numpy"'),
    ('"kind":"tensor"', '"kind":"scalar"'),
    ('"kind":"tensor"', '"kind":"parameter"'),
    ('"kind":"tensor"', '"kind":"tensor","requires_grad":true'),
    ('"version":1', '"version":2'),
    ('"version":1', '"version":true'),
    ('"version":1', '"version":1.0'),
    ('"metadata":{', '"metadata":{"epoch":"4",'),
    ('"metadata":{', '"metadata":{"x":1,'),
    ('"metadata":{', '"metadata":{"satchel.x":"y",'),
    ('"epoch":"3"', '"epoch":"\\ud800"'),
    ('"epoch":"3"', '"epoch":"\\u0033"'),
    ('"module":"', '"module":"","x":"'),
    ('{"version"', ' {"version"'),
    ('{"version"', '{ "version"'),
    (',"metadata"', ' , "metadata"'),
]


def apply(text: str, edit: tuple[str, str]) -> str:
    old, new = edit
    assert old in text, old
    return text.replace(old, new, 1)


def check_same_meaning(text: str) -> bool:
    """The column path refuses ``text`` or reads it as the general path does; True when it
    read it."""
    plain = plain_manifest(text)
    slow = general(text)
    if plain is None:
        return False
    assert isinstance(slow, Manifest), f"column path accepted what the general path refuses: {slow}"
    same(parse_manifest(text, where="m"), slow)
    return True


@pytest.mark.parametrize("edit", EDITS, ids=[new for _, new in EDITS])
def test_spec_3_12_edits_are_refused_or_read_alike(tmp_path: Path, edit: tuple[str, str]) -> None:
    text = apply(written(tmp_path)[0], edit)
    check_same_meaning(text)


def test_spec_3_12_duplicates_and_bad_values_never_take_the_column_path(tmp_path: Path) -> None:
    # The edits the general path refuses: the column path must refuse each of them itself.
    base = written(tmp_path)[0]
    refused = [e for e in EDITS if not isinstance(general(apply(base, e)), Manifest)]
    assert len(refused) >= 20
    for edit in refused:
        assert plain_manifest(apply(base, edit)) is None, edit
        with pytest.raises(satchel.FormatError):
            parse_manifest(apply(base, edit), where="m")


def test_spec_3_12_random_edits_are_refused_or_read_alike(tmp_path: Path) -> None:
    texts = written(tmp_path)
    rng = random.Random(312)
    alphabet = '{}[]",:0123456789-.etruaflsn\\ '
    read = 0
    for _ in range(1500):
        text = rng.choice(texts)
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(chars))
            op = rng.random()
            if op < 0.4:
                chars[at] = rng.choice(alphabet)
            elif op < 0.7:
                del chars[at]
            else:
                chars.insert(at, rng.choice(alphabet))
        read += check_same_meaning("".join(chars))
    assert read > 0  # some edits keep the spelling (a digit in a checksum, a name)


def test_spec_3_12_other_structures_take_the_general_path(tmp_path: Path) -> None:
    cases: dict[str, Any] = {
        "list": [np.ones(2), np.zeros(3)],
        "nested": {"a": {"b": np.ones(2)}},
        "view": {"x": (base := torch.arange(6.0)), "v": base[2:4]},
        "grad": {"p": torch.ones(2, requires_grad=True)},
        "empty": {"e": np.zeros((0, 3))},
    }
    for name, obj in cases.items():
        path = tmp_path / f"{name}.satchel"
        satchel.save(obj, path)
        text = manifest_text(path)
        assert plain_manifest(text) is None, name
        assert isinstance(general(text), Manifest)
