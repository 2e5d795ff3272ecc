"""Sweep the sampling kernel's search settings on a GPU, then record ``labkit bench --sections sampling``.

    PYTHONPATH=. python scripts/gpu/sweep_sampling.py --out DIR

For every setting (NPIV 4/8/16 thresholds a pass x search tiles of 512/1024 candidates x 8/16
warps) and every benchmark shape (flat ``randn·3`` and peaked ``randn·12`` logits, 32k and 128k
tokens, batch 1 and 64): the draws are checked to lie in the top-p set, then the kernel and
torch's sort-based top-p are timed through CUDA graphs. Prints one line per shape, picks the
setting with the best geometric-mean time among those at least 2x the sort at batch 64 (else
the one with the best worst case there), writes ``DIR/sweep_sampling.json``, and runs the
``sampling`` section with that setting, which writes its record to DIR. Copy the setting into
``labkit/decoding/sampling_launch.py`` (NPIV, SEARCH_BLOCK, SEARCH_WARPS) when it changes.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import labkit  # noqa: F401  (decides the mode before triton loads)
import torch
import triton
from triton.testing import do_bench_cudagraph

from labkit.bench.report import add_arguments, run_report
from labkit.decoding import sampling_launch as st
from labkit.decoding.sampling import probs, torch_top_p_sample

SETTINGS = [(block, warps, npiv) for npiv in (4, 8, 16) for block, warps in ((512, 8), (1024, 8), (1024, 16))]
TOP_P = 0.9


def use(setting) -> None:
    st.SEARCH_BLOCK, st.SEARCH_WARPS, st.NPIV = setting


def sweep_shape(scale: float, V: int, B: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(V + B)
    logits = torch.randn(B, V, device="cuda", generator=g) * scale
    keep = probs(logits, 1.0, None, TOP_P) > 0
    row = {"scale": scale, "V": V, "B": B, "us": {},
           "sort_us": do_bench_cudagraph(lambda: torch_top_p_sample(logits, 1.0, None, TOP_P), rep=30) * 1e3}
    for setting in SETTINGS:
        use(setting)
        run = lambda: st.sample_top_k_top_p(logits, 1.0, None, TOP_P, seed=7)  # noqa: E731
        if not bool(keep.gather(1, run().view(B, 1)).all()):
            raise AssertionError(f"setting {setting} drew outside the top-p set at scale {scale}, V={V}, B={B}")
        row["us"]["/".join(map(str, setting))] = do_bench_cudagraph(run, rep=30) * 1e3
    return row


def choose(rows: list[dict]) -> str:
    def geomean(k):
        return math.exp(sum(math.log(r["us"][k]) for r in rows) / len(rows))

    def worst64(k):
        return min(r["sort_us"] / r["us"][k] for r in rows if r["B"] == 64)

    keys = list(rows[0]["us"])
    for k in sorted(keys, key=geomean)[:5]:
        print(f"tile/warps/NPIV {k}: geometric mean {geomean(k):.1f} us, worst batch-64 speedup {worst64(k):.2f}x")
    fast = [k for k in keys if worst64(k) >= 2.0]
    return min(fast, key=geomean) if fast else max(keys, key=worst64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for sweep_sampling.json and the section's record")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for scale in (3.0, 12.0):
        for V in (32768, 131072):
            for B in (1, 64):
                r = sweep_shape(scale, V, B)
                print(f"randn*{scale:g} V={V} B={B}: sort {r['sort_us']:.1f} us | "
                      + " ".join(f"{k}:{v:.0f}" for k, v in r["us"].items()), flush=True)
                rows.append(r)
    best = choose(rows)
    print("chosen tile/warps/NPIV:", best, flush=True)
    (out / "sweep_sampling.json").write_text(json.dumps(
        {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
         "chosen": best, "rows": rows}, indent=1) + "\n")
    use(tuple(int(x) for x in best.split("/")))
    p = argparse.ArgumentParser()
    add_arguments(p)
    run_report(p.parse_args(["--sections", "sampling", "--out", str(out), "--no-progress"]))


if __name__ == "__main__":
    main()
