"""Section ``sampling`` (notebook 06): top-p sampling in one Triton kernel against torch's sort.

On a GPU (float32 logits ``randn · 3``, flat, and ``randn · 12``, peaked; top-p 0.9,
temperature 1): labkit's kernel and the sort-based sampler at vocabularies of 32k and 128k tokens (Llama 2, Llama 3), batch 1 and 64,
each checked to draw only from the top-p set before it is timed; ``quick``: 128k only. The
headline: the kernel's speedup over the sort at batch 64. Sim mode: tiny sizes, checked only.
"""

from __future__ import annotations

from labkit.bench.records import Record
from labkit.bench.sections import SectionFailed, headline

TITLE = "top-p sampling without a sort"
NOTEBOOKS = "06"
RESULTS = "sampling"


def run(quick: bool = False, *, roofline_gbps: float | None = None, progress: bool = True) -> list[Record]:
    """Check (and on a GPU time) the sampling kernel; see :func:`labkit.bench.sampling.bench_sampling`."""
    from labkit.bench.sampling import bench_sampling

    try:
        return bench_sampling(vocabs=(131072,) if quick else (32768, 131072))
    except AssertionError as exc:
        raise SectionFailed([str(exc)]) from exc


def summary(records: list[Record]) -> dict | None:
    fast = [r for r in records if r.kernel == "triton one-pass" and r.extra.get("speedup")]
    if not fast:
        return None
    at64 = [r for r in fast if r.shape["B"] == 64] or fast
    worst = min(at64, key=lambda r: r.extra["speedup"])
    text = ", ".join(f"randn·{r.shape.get('logit_scale', 3.0):g} V={r.shape['V'] // 1024}k B={r.shape['B']} "
                     f"{r.extra['speedup']:.1f}×" for r in fast)
    return headline(f"kernel vs torch's sort-based top-p: {text}", worst.extra["speedup"],
                    "× torch sort (worst at B=64)", "top-p sampling kernel vs sort")


def show(records: list[Record], source: str) -> None:
    from labkit.bench.sampling import format_sampling

    print(f"top-p sampling ({source}):")
    print(format_sampling(records))


__all__ = ["NOTEBOOKS", "RESULTS", "TITLE", "run", "show", "summary"]
