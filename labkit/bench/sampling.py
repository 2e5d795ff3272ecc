"""The sampling benchmark: labkit's top-k/top-p kernel (and a student's) against torch's sort.

Notebook 06 and ``labkit bench --sections sampling`` call :func:`bench_sampling`; the numbers
are Records (:mod:`labkit.bench.records`), shown by :func:`format_sampling`.
"""

from __future__ import annotations

import torch

from labkit import runtime
from labkit.decoding.sampling import torch_top_p_sample
from labkit.decoding.sampling_launch import sample_top_k_top_p, sample_top_p


def bench_sampling(*, vocabs=(32768, 131072), batches=(1, 64), scales=(3.0, 12.0), temperature: float = 1.0,
                   top_k: int | None = None, top_p: float = 0.9, dtype=torch.float32, kernel=None,
                   top_p_kernel=None, save: bool = False) -> list:
    """Time the one-pass sampler against the sort-based one (``torch.sort`` top-p) -> Records.

    For each logit scale, vocabulary size and batch: logits ``randn · scale`` (``3``: flat, about
    half the vocabulary can be in the top-p set, the kernel's worst case; ``12``: peaked, a few
    hundred can, closer to a trained model's logits), both samplers checked to keep the same support, then timed with CUDA events through a CUDA graph (``time_for_record``; eagerly
    where a graph cannot capture). ``extra['speedup']`` is torch's time over the kernel's, both
    timed the same way (``extra['speedup_timing']`` says which).
    Bytes are one read of the logits. In sim mode: tiny sizes, correctness only (no times).
    ``top_p_kernel``: also time a kernel with :func:`top_p_sample_kernel`'s signature (the
    notebook's exercise) as "your kernel" (top-p only: give ``top_k=None``).
    ``save=True`` writes ``data/results/sampling_<gpu>.json``.
    """
    from labkit.bench.records import Record, run_meta, save_records
    from labkit.bench.timing import gbps, time_for_record
    from labkit.decoding.sampling import probs

    if runtime.is_sim():
        vocabs, batches = tuple(min(v, 200) for v in vocabs[:1]), tuple(min(b, 2) for b in batches[:1])
        scales = scales[:1]
    device = "cpu" if runtime.is_sim() else "cuda"
    records = []
    for scale, V, B in ((s, v, b) for s in scales for v in vocabs for b in batches):
        gen = torch.Generator(device=device).manual_seed(V + B)
        logits = (torch.randn(B, V, device=device, generator=gen) * scale).to(dtype)
        ours = lambda: sample_top_k_top_p(logits, temperature, top_k, top_p, seed=7, kernel=kernel)  # noqa: E731
        # torch's default generator (not gen) so that CUDA graphs can capture its draws too
        theirs = lambda: torch_top_p_sample(logits, temperature, top_k, top_p)  # noqa: E731
        support = probs(logits, temperature, top_k, top_p) > 0
        drawn = ours()
        if not bool(support.gather(-1, drawn.view(B, 1)).all()):
            raise AssertionError(f"sampler drew a token outside the top-k/top-p set at V={V}, B={B}")
        shape = {"B": B, "V": V, "logit_scale": scale, "top_k": top_k, "top_p": top_p,
                 "temperature": temperature}
        nbytes = B * V * logits.element_size()
        ms_t, ex_t = time_for_record(theirs)
        ms_o, ex_o = time_for_record(ours)
        records.append(Record("torch sort top-p", shape, str(dtype).replace("torch.", ""), nbytes, ms_t,
                              gbps(nbytes, ms_t), None, ex_t))
        speed = _speedup(ms_t, ex_t, ms_o, ex_o)
        records.append(Record("triton one-pass", shape, str(dtype).replace("torch.", ""), nbytes, ms_o,
                              gbps(nbytes, ms_o), None, {**ex_o, **speed}))
        if top_p_kernel is not None and top_k is None:
            yours = lambda: sample_top_p(logits, temperature, top_p, 7, kernel=top_p_kernel)  # noqa: E731
            if not bool(support.gather(-1, yours().view(B, 1)).all()):
                raise AssertionError(f"your kernel drew a token outside the top-p set at V={V}, B={B}")
            ms_y, ex_y = time_for_record(yours)
            speed = _speedup(ms_t, ex_t, ms_y, ex_y)
            records.append(Record("your kernel", shape, str(dtype).replace("torch.", ""), nbytes, ms_y,
                                  gbps(nbytes, ms_y), None, {**ex_y, **speed}))
    if save and not runtime.is_sim():
        save_records(records, "sampling", run_meta())
    return records


def _speedup(ms_torch, ex_torch, ms_ours, ex_ours) -> dict:
    """torch's time over ours, both timed the same way: through a CUDA graph, or both eagerly
    when torch's sampler could not be captured."""
    if not ms_torch or not ms_ours:
        return {}
    if ex_torch.get("timing") != "graph":
        return {"speedup": ms_torch / ex_ours["eager_ms"], "speedup_timing": "eager, both"}
    return {"speedup": ms_torch / ms_ours, "speedup_timing": "graph, both"}


def format_sampling(records) -> str:
    """A table: logit scale, V, B, then each sampler's time (µs) and its speedup over torch's sort."""
    names = list(dict.fromkeys(r.kernel for r in records))
    key = lambda r: (r.shape.get("logit_scale", 3.0), r.shape["V"], r.shape["B"])  # noqa: E731
    by = {(r.kernel, *key(r)): r for r in records}
    shapes = list(dict.fromkeys(key(r) for r in records))
    lines = [f"{'logits':>8} {'V':>7} {'B':>3} " + " ".join(f"{n:>22}" for n in names)]
    for scale, V, B in shapes:
        cells = []
        for n in names:
            r = by.get((n, scale, V, B))
            if r is None or r.time_ms is None:
                cells.append(f"{'—':>22}")
            else:
                sp = f" ({r.extra['speedup']:.1f}x)" if r.extra.get("speedup") else ""
                cells.append(f"{r.time_ms * 1e3:>12.1f} µs{sp:>7}")
        lines.append(f"{f'randn·{scale:g}':>8} {V:>7} {B:>3} " + " ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":  # python -m labkit.bench.sampling: the GPU benchmark, recorded
    print(format_sampling(bench_sampling(save=True)))


__all__ = ["bench_sampling", "format_sampling"]
