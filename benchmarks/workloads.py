"""The states the benchmark saves and loads."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

GIB = 1 << 30
FP32 = 4


@dataclass
class Payload:
    """One state in the three shapes the peers want: torch tensors, numpy views, raw bytes."""

    name: str
    state: dict[str, torch.Tensor]

    @cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        # Views of the torch storage: np.savez gets the same bytes without a copy.
        return {key: tensor.numpy() for key, tensor in self.state.items()}

    @cached_property
    def flat(self) -> np.ndarray:
        """All tensor bytes back to back: what the raw write/read limits move."""
        parts = [tensor.reshape(-1).view(torch.uint8).numpy() for tensor in self.state.values()]
        return np.concatenate(parts)

    @cached_property
    def spans(self) -> dict[str, tuple[int, int]]:
        """(offset, nbytes) of each tensor inside `flat`."""
        spans: dict[str, tuple[int, int]] = {}
        offset = 0
        for key, tensor in self.state.items():
            nbytes = tensor.numel() * tensor.element_size()
            spans[key] = (offset, nbytes)
            offset += nbytes
        return spans

    def materialize(self) -> Payload:
        """Build the derived shapes now, so no timed save pays for building its input."""
        _ = self.arrays, self.flat, self.spans
        return self

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())

    @property
    def count(self) -> int:
        return len(self.state)


def _layer_shapes(prefix: str, d: int) -> dict[str, tuple[int, ...]]:
    # A pre-norm GPT block: fused qkv, output projection, 4x MLP, two layernorms.
    return {
        f"{prefix}.ln1.weight": (d,),
        f"{prefix}.ln1.bias": (d,),
        f"{prefix}.attn.qkv.weight": (3 * d, d),
        f"{prefix}.attn.qkv.bias": (3 * d,),
        f"{prefix}.attn.proj.weight": (d, d),
        f"{prefix}.attn.proj.bias": (d,),
        f"{prefix}.ln2.weight": (d,),
        f"{prefix}.ln2.bias": (d,),
        f"{prefix}.mlp.fc1.weight": (4 * d, d),
        f"{prefix}.mlp.fc1.bias": (4 * d,),
        f"{prefix}.mlp.fc2.weight": (d, 4 * d),
        f"{prefix}.mlp.fc2.bias": (d,),
    }


def transformer_shapes(size_bytes: int) -> dict[str, tuple[int, ...]]:
    """Shapes of a GPT-like fp32 model of about `size_bytes` (1 GiB: d=2048, 4 layers)."""
    d = 2048 if size_bytes >= GIB // 2 else 512
    vocab = 16 * d
    embedding = vocab * d * FP32
    per_layer = 12 * d * d * FP32
    layers = max(1, round((size_bytes - embedding) / per_layer))
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (vocab, d)}
    for i in range(layers):
        shapes.update(_layer_shapes(f"layers.{i}", d))
    shapes["ln_f.weight"] = (d,)
    shapes["ln_f.bias"] = (d,)
    return shapes


def transformer_state(size_bytes: int, seed: int = 0) -> Payload:
    """Random fp32 weights (random so no layer of the stack can compress or dedupe them)."""
    gen = torch.Generator().manual_seed(seed)
    state = {
        key: torch.empty(shape, dtype=torch.float32).normal_(0.0, 0.02, generator=gen)
        for key, shape in transformer_shapes(size_bytes).items()
    }
    return Payload("transformer", state)


def one_tensor_name(payload: Payload) -> str:
    """A mid-file attention projection: a typical single-tensor read (16 MiB at d=2048)."""
    keys = [key for key in payload.state if key.endswith("attn.proj.weight")]
    return keys[len(keys) // 2]


def small_state(count: int, numel: int = 64, seed: int = 1) -> Payload:
    gen = torch.Generator().manual_seed(seed)
    state = {f"t.{i:05d}": torch.randn(numel, generator=gen) for i in range(count)}
    return Payload("small", state)
