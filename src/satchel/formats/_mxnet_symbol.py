"""MXNet ``-symbol.json`` graphs (``HybridBlock.export``, ``sym.save``) read as plain data.

The file is nnvm's graph JSON (``nnvm/src/pass/saveload_json.cc``)::

    {"nodes": [{"op": "null" | <operator>, "name": str, "attrs": {str: str},
                "inputs": [[node_id, output_index, version], ...]}, ...],
     "arg_nodes": [node_id, ...], "node_row_ptr": [...], "heads": [[node_id, index, version]],
     "attrs": {"mxnet_version": ["int", 10901]}}

Nodes come in topological order (every input names an earlier node); older releases spell
``attrs`` as ``attr`` or ``param``. Reading gives what ``mx.sym.load(path)`` lists, plus the
nodes themselves: ``{"list_arguments", "list_auxiliary_states", "list_outputs", "nodes"}``.
Nothing in the file is evaluated: operator names are strings, attributes stay strings.

As nnvm's ``ListInputNames`` does, variables (``op == "null"``) are listed in post-order from
the heads (inputs, then control dependencies); a variable is an auxiliary state when an operator
mutates it (``FMutateInputs``: the moving mean and variance of the batch-norm operators, inputs
3 and 4), an argument otherwise. An output is the head variable's name, or ``<node>_<output>``
with the operator's output name (``output`` for single-output operators, ``output<i>`` else).
"""

from __future__ import annotations

from typing import Any

from .._format.header import json_object
from ..errors import FormatError

__all__ = ["read_symbol", "sniff_symbol"]

MAX_SYMBOL = 256 << 20  # real graphs are a few MB; the JSON parser holds the whole file
_MAX_NODES = 5_000_000
# FMutateInputs (src/operator/nn/batch_norm.cc and friends): input indices an op writes to.
_MUTATES = {
    "BatchNorm": (3, 4),
    "BatchNorm_v1": (3, 4),
    "CuDNNBatchNorm": (3, 4),
    "SyncBatchNorm": (3, 4),
    "_contrib_SyncBatchNorm": (3, 4),
    "_contrib_BatchNormWithReLU": (3, 4),
}
# FListOutputNames of the multi-output operators a checkpoint graph commonly holds.
_OUTPUT_NAMES = {
    "BatchNorm": ("output", "mean", "var"),
    "BatchNorm_v1": ("output", "mean", "var"),
    "SyncBatchNorm": ("output", "mean", "var"),
    "_contrib_SyncBatchNorm": ("output", "mean", "var"),
    "RNN": ("output", "state", "state_cell"),
    "SoftmaxOutput": ("output",),
}


def sniff_symbol(head: bytes) -> bool:
    """JSON whose first key is ``"nodes"`` holding an object with an ``"op"``: what nnvm writes."""
    text = head.lstrip()
    if not text.startswith(b"{"):
        return False
    rest = text[1:].lstrip()
    if not rest.startswith(b'"nodes"'):
        return False
    rest = rest[len(b'"nodes"') :].lstrip()
    return rest.startswith(b":") and rest[1:].lstrip().startswith(b"[") and b'"op"' in head


def read_symbol(raw: bytes, *, where: str) -> dict[str, Any]:
    """What ``mx.sym.load`` lists about the graph in ``raw``, and its nodes as plain dicts.

    Raises:
        FormatError: not nnvm graph JSON, a node or head naming a missing or later node.
    """
    if len(raw) > MAX_SYMBOL:
        raise FormatError(f"{where}: symbol JSON larger than {MAX_SYMBOL} bytes")
    doc = json_object(raw.strip(), where=where, what="symbol JSON")
    nodes = [_node(n, i, where) for i, n in enumerate(_list(doc.get("nodes"), "nodes", where))]
    if len(nodes) > _MAX_NODES:
        raise FormatError(f"{where}: more than {_MAX_NODES} nodes")
    heads = [_entry(h, len(nodes), "heads", where) for h in _list(doc.get("heads"), "heads", where)]
    if not heads:
        raise FormatError(f"{where}: the graph has no heads (outputs)")
    order = _post_order(nodes, [h[0] for h in heads])
    mutable = {
        node["inputs"][k][0]
        for node in nodes
        for k in _MUTATES.get(node["op"], ())
        if k < len(node["inputs"])
    }
    variables = [i for i in order if nodes[i]["op"] == "null"]
    return {
        "list_arguments": [nodes[i]["name"] for i in variables if i not in mutable],
        "list_auxiliary_states": [nodes[i]["name"] for i in variables if i in mutable],
        "list_outputs": [_output_name(nodes, h) for h in heads],
        "nodes": nodes,
    }


def _list(value: Any, what: str, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise FormatError(f"{where}: symbol JSON {what!r} is not a list")
    return value


def _entry(value: Any, n_nodes: int, what: str, where: str) -> list[int]:
    """``[node_id, output_index, version]`` (version optional in old files), ids in range."""
    if (
        not isinstance(value, list)
        or not 2 <= len(value) <= 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        raise FormatError(f"{where}: {what} entry {str(value)[:60]} is not [node, index, version]")
    if value[0] >= n_nodes:
        raise FormatError(f"{where}: {what} entry names node {value[0]} of {n_nodes}")
    return [int(v) for v in value]


def _node(value: Any, i: int, where: str) -> dict[str, Any]:
    here = f"{where}: node {i}"
    if not isinstance(value, dict):
        raise FormatError(f"{here} is not an object")
    op, name = value.get("op"), value.get("name")
    if not isinstance(op, str) or not isinstance(name, str):
        raise FormatError(f"{here}: 'op' and 'name' must be strings")
    attrs = value.get("attrs", value.get("attr", value.get("param", {})))
    if not isinstance(attrs, dict) or not all(isinstance(v, str) for v in attrs.values()):
        raise FormatError(f"{here} ({name!r}): attributes must be strings")
    # Inputs name earlier nodes only (nnvm saves in topological order): no cycles by construction.
    raw_inputs = _list(value.get("inputs"), "inputs", where)
    inputs = [_entry(e, i, f"node {i} input", where) for e in raw_inputs]
    deps = value.get("control_deps", [])
    if not isinstance(deps, list) or not all(isinstance(d, int) and 0 <= d < i for d in deps):
        raise FormatError(f"{here} ({name!r}): control_deps must name earlier nodes")
    out: dict[str, Any] = {"op": op, "name": name, "attrs": dict(attrs), "inputs": inputs}
    if deps:
        out["control_deps"] = [int(d) for d in deps]
    return out


def _post_order(nodes: list[dict[str, Any]], roots: list[int]) -> list[int]:
    """nnvm's PostOrderDFSVisit: each node once, after its inputs and control dependencies."""
    seen: set[int] = set()
    order: list[int] = []
    for root in roots:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, 0)]
        while stack:
            nid, k = stack.pop()
            deps = [e[0] for e in nodes[nid]["inputs"]] + nodes[nid].get("control_deps", [])
            if k < len(deps):
                stack.append((nid, k + 1))
                child = deps[k]
                if child not in seen:
                    seen.add(child)
                    stack.append((child, 0))
            else:
                order.append(nid)
    return order


def _output_name(nodes: list[dict[str, Any]], head: list[int]) -> str:
    node = nodes[head[0]]
    if node["op"] == "null":
        return str(node["name"])
    index = head[1]
    names = _OUTPUT_NAMES.get(node["op"])
    if names is not None and index < len(names):
        suffix = names[index]
    else:
        count = node["attrs"].get("num_outputs", "1")
        single = index == 0 and (not count.isdigit() or int(count) == 1)
        suffix = "output" if single else f"output{index}"
    return f"{node['name']}_{suffix}" if node["name"] else suffix
