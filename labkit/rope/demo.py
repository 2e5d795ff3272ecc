"""Notebook 04's text demo: the model decodes with a given fused RoPE + KV-write kernel.

    demo = generate_with_write_kernel(write_kv_rope_kernel)   # the notebook's own kernel
    demo.prompt, demo.text, demo.matches

Every key of every layer then goes into the cache through that kernel, rotated on its way in
(:class:`~labkit.kvcache.contiguous.FusedRopeKVCache`), and the greedy tokens are compared
with labkit's unfused path (the model's PyTorch rotation, then an indexed write). A kernel
that is not finished, or wrong on a tiny input, is replaced by labkit's, and the demo says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from labkit import runtime
from labkit.course.fallback import use_student
from labkit.rope.reference import apply_rope, rope_tables


@dataclass
class FusedGeneration:
    """Greedy text from the fused write, beside labkit's unfused path."""

    prompt: str
    text: str  # the new text the fused path produced
    tokens: list[int]  # its token ids
    reference: list[int]  # labkit's unfused path's token ids
    yours: bool  # False: the kernel given fell back to labkit's

    @property
    def matches(self) -> bool:
        return self.tokens == self.reference


def probe_write_kernel(kernel) -> None:
    """Raise unless ``kernel`` writes a tiny paged-style case right: 3 tokens, 3 heads, D = 6.

    Rows, slots and positions all differ (a position is not a slot), one token points past the
    cache and must be skipped; the key is checked against the float64 rotation, the value exactly.
    """
    from labkit.rope.write import write_kv_rope

    dev = runtime.device()
    g = torch.Generator().manual_seed(4)
    k, v = (torch.randn(3, 3, 6, generator=g).to(dev) for _ in range(2))
    kc, vc = torch.zeros(2, 3, 4, 6, device=dev), torch.zeros(2, 3, 4, 6, device=dev)
    rows, slots, pos = (torch.tensor(x, device=dev) for x in ([1, 0, 1], [2, 3, 4], [5, 1, 2]))
    cos, sin = rope_tables(8, 6, device=dev)
    write_kv_rope(k, v, kc, vc, rows, slots, (cos, sin, pos), check_indices=False, kernel=kernel)
    want = apply_rope(k[:2].double().cpu(), pos[:2, None].cpu(), cos.double().cpu(), sin.double().cpu())
    got_k, got_v = kc[rows[:2], :, slots[:2]], vc[rows[:2], :, slots[:2]]
    assert torch.allclose(got_k.double().cpu(), want, atol=1e-5), "keys not rotated, or written to the wrong slot"
    assert torch.equal(got_v, v[:2]), "values not copied, or written to the wrong slot"
    assert int((kc != 0).any(-1).sum()) == 6, "a token outside the cache (slot 4 of 4) was written"


def generate_with_write_kernel(kernel, *, model: str = "target", prompt: str | None = None,
                               max_new_tokens: int | None = None) -> FusedGeneration:
    """Greedy-decode with ``kernel`` as the fused RoPE + KV write, and with labkit's unfused path.

    kernel: a ``@triton.jit`` kernel with ``write_kv_rope_kernel``'s signature; if
    :func:`probe_write_kernel` fails on it, labkit's kernel runs instead (printed). model: a
    shipped model's name. prompt: text (default: a held-out line of 48 characters).
    max_new_tokens: default ``runtime.SIZES.model_tokens`` (a few in sim mode, hundreds on a GPU).
    """
    from labkit.decoding import generate
    from labkit.model import heldout_prompts, load_model

    chosen = use_student(kernel, "labkit.rope.write:write_kv_rope_kernel", "04.write_kv_rope",
                         probe=probe_write_kernel, what="fused cache write")
    # float32 on a GPU too: both paths then round the same rotated keys the same way, so a greedy
    # tie broken differently by half-precision rounding cannot make "matches" fail.
    net, tok = load_model(model, dtype=torch.float32)
    prompt = prompt if prompt is not None else heldout_prompts(1, 48, seed=0)[0]
    ids = tok.encode(prompt)
    n = max_new_tokens or runtime.SIZES.model_tokens
    fused = generate(net, ids, n, fused_rope=True, write_kernel=chosen)
    unfused = generate(net, ids, n)
    return FusedGeneration(prompt, tok.decode(fused.tokens), fused.tokens, unfused.tokens, chosen is kernel)


__all__ = ["FusedGeneration", "generate_with_write_kernel", "probe_write_kernel"]
