"""How much accuracy a quantized KV cache costs, measured on the CPU (notebook 08's study).

Three measurements, each against a cache of fp16 K and V (what the course's caches hold):

1. **Attention outputs** (:func:`attention_errors`): decode attention over random K/V and over
   the shipped model's own K/V (every layer, held-out text), with the cache quantized per
   (token, head) in int8 and fp8 e4m3, and with int8 keys scaled per channel instead (KIVI's
   scheme). Relative error of the output against the fp16 cache's, in float64.
2. **The model** (:func:`model_quality`): held-out cross-entropy and greedy (top-1) agreement,
   position by position, of the model whose cache is quantized against the same model with an
   fp16 cache. A cache stores what each layer wrote: keys after RoPE, values as they are; the
   quantized model therefore attends over ``dequantize(quantize(k))`` and the same for v, at
   every position (its own token's too, as a decode step does after the write).
3. **Key outliers** (:func:`key_channel_stats`): per-channel magnitudes of the model's keys,
   which make one scale per token coarse when a few channels are much larger than the rest.

    python -m labkit.kvcache.quant_accuracy [--out data/results]   # writes quant-accuracy_cpu.json
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import sys
from pathlib import Path

import torch

from labkit.attention.reference import reference_decode
from labkit.kvcache.quant import quantize, quantize_per_channel

SCHEMES = {  # name -> (key transform, value transform) over [B, H, T, D] float tensors
    "fp16": (lambda x: x.half().float(), lambda x: x.half().float()),
    "int8": (lambda x: quantize(x, "int8").dequantize(), lambda x: quantize(x, "int8").dequantize()),
    "fp8_e4m3": (lambda x: quantize(x, "fp8_e4m3").dequantize(), lambda x: quantize(x, "fp8_e4m3").dequantize()),
    "int8_channel_keys": (lambda x: quantize_per_channel(x, "int8"), lambda x: quantize(x, "int8").dequantize()),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


@contextlib.contextmanager
def quantized_cache(scheme: str):
    """Run the model's cache-free forward as if its K/V went through a ``scheme`` cache."""
    import labkit.model.transformer as tr

    fk, fv = SCHEMES[scheme]
    original = tr.causal_attention

    def attend(q, k, v, dropout_p=0.0):
        return original(q, fk(k.float()).to(k.dtype), fv(v.float()).to(v.dtype), dropout_p=dropout_p)

    tr.causal_attention = attend
    try:
        yield
    finally:
        tr.causal_attention = original


@contextlib.contextmanager
def capture_kv(store: list):
    """Record each layer's (q, k, v) [B, H, S, D] (keys and queries after RoPE) into ``store``."""
    import labkit.model.transformer as tr

    original = tr.causal_attention

    def attend(q, k, v, dropout_p=0.0):
        store.append((q.detach().clone(), k.detach().clone(), v.detach().clone()))
        return original(q, k, v, dropout_p=dropout_p)

    tr.causal_attention = attend
    try:
        yield
    finally:
        tr.causal_attention = original


def heldout_windows(tok, n: int, length: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` windows of ``length`` tokens from the held-out 10% of the corpus: [n, length] int64."""
    import random

    from labkit.model.corpus import load_text, split

    _, val = split(load_text())
    ids = tok.encode(val)
    rng = random.Random(seed)
    starts = sorted(rng.sample(range(len(ids) - length - 1), n))
    return torch.tensor([ids[s:s + length + 1] for s in starts], dtype=torch.long)


def model_activations(model, tokens: torch.Tensor) -> list:
    """The model's per-layer (q, k, v) on ``tokens`` [B, S]."""
    store: list = []
    with torch.no_grad(), capture_kv(store):
        model(tokens)
    return store


def attention_errors(acts: list, *, random_T: int = 1024, random_D: int = 64, seed: int = 0) -> dict:
    """Relative error of decode-attention outputs with each scheme's cache against the fp16 cache's.

    ``acts``: the model's per-layer (q, k, v); the last position's query attends to every
    position. Random: standard normal q, k, v at T = ``random_T``. Returns ``{"random": {scheme:
    err}, "model": {scheme: [err per layer]}, "model_mean": {scheme: mean}}``.
    """
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(8, 4, random_D, generator=g, dtype=torch.float64)
    k = torch.randn(8, 4, random_T, random_D, generator=g, dtype=torch.float64)
    v = torch.randn(8, 4, random_T, random_D, generator=g, dtype=torch.float64)
    out = {"random": {}, "model": {}, "model_mean": {}}
    base = reference_decode(q, *[f(x.float()) for f, x in zip(SCHEMES["fp16"], (k, v))])
    for name, (fk, fv) in SCHEMES.items():
        if name != "fp16":
            out["random"][name] = rel(reference_decode(q, fk(k.float()), fv(v.float())), base)
    for name, (fk, fv) in SCHEMES.items():
        if name == "fp16":
            continue
        errs = []
        for ql, kl, vl in acts:
            ql = ql[:, :, -1].double()
            kb, vb = SCHEMES["fp16"][0](kl.float()), SCHEMES["fp16"][1](vl.float())
            errs.append(rel(reference_decode(ql, fk(kl.float()), fv(vl.float())), reference_decode(ql, kb, vb)))
        out["model"][name] = errs
        out["model_mean"][name] = sum(errs) / len(errs)
    return out


def model_quality(model, tokens: torch.Tensor, schemes=("int8", "fp8_e4m3", "int8_channel_keys")) -> dict:
    """Held-out cross-entropy (nats per token) and top-1 agreement with the fp16 cache, per scheme.

    ``tokens``: [N, S + 1] windows; the model reads the first S of each and predicts the next.
    """
    x, y = tokens[:, :-1], tokens[:, 1:]

    def run(scheme):
        with torch.no_grad(), quantized_cache(scheme):
            logits = model(x).float()
        ce = float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)))
        return ce, logits.argmax(-1)

    ce0, top0 = run("fp16")
    with torch.no_grad():
        ref_logits = model(x).float()
    ce_fp32 = float(torch.nn.functional.cross_entropy(ref_logits.reshape(-1, ref_logits.shape[-1]), y.reshape(-1)))
    out = {"positions": int(y.numel()), "fp32_ce": ce_fp32, "fp16_ce": ce0,
           "fp16_agreement_with_fp32": float((top0 == ref_logits.argmax(-1)).float().mean())}
    for s in schemes:
        ce, top = run(s)
        out[s] = {"ce": ce, "ce_rel_diff": (ce - ce0) / ce0, "agreement": float((top == top0).float().mean())}
    return out


def key_channel_stats(acts: list) -> dict:
    """Per layer: the keys' absmax per channel (head 0, over every token) and its max/median ratio."""
    stats = []
    for _, k, v in acts:
        kmax = k.float().abs().amax(dim=(0, 2))  # [H, D]
        vmax = v.float().abs().amax(dim=(0, 2))
        stats.append({"key_max_over_median": float((kmax.amax(-1) / kmax.median(-1).values).mean()),
                      "value_max_over_median": float((vmax.amax(-1) / vmax.median(-1).values).mean()),
                      "key_channel_absmax_head0": [round(float(t), 4) for t in kmax[0]]})
    return {"layers": stats}


def run_study(*, windows: int = 32, length: int = 512, seed: int = 0) -> dict:
    """The whole study on the shipped target model, in fp32 on the CPU."""
    from dataclasses import asdict

    from labkit import runtime
    from labkit.bench.records import Record, versions
    from labkit.kvcache.quant import bytes_per_token
    from labkit.model import load_model

    torch.manual_seed(seed)
    model, tok = load_model("target", device="cpu", dtype=torch.float32)
    tokens = heldout_windows(tok, windows, length, seed=seed)
    acts = model_activations(model, tokens[:8, :-1])
    attention, quality = attention_errors(acts), model_quality(model, tokens)
    cfg = model.config
    records = [asdict(Record(f"kv_cache_{s}", {"model": "target", "positions": quality["positions"]}, s,
                             cfg.n_layers * bytes_per_token(cfg.kv_heads, cfg.head_dim, None if s == "fp16" else
                                                            s.replace("_channel_keys", "")),
                             extra={**quality[s], "attention_error_random": attention["random"][s],
                                    "attention_error_model_mean": attention["model_mean"][s]}))
               for s in ("int8", "fp8_e4m3", "int8_channel_keys")]
    return {
        "meta": {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": "cpu",
                 "cc": None, "mode": runtime.MODE, "versions": versions(), "roofline_gbps": None,
                 "model": "target", "config": cfg.__dict__, "windows": windows, "length": length, "seed": seed,
                 "what": "CPU float64/float32 study of a quantized KV cache against an fp16 cache "
                         "(labkit.kvcache.quant_accuracy); records[].bytes: cache bytes per token, all layers"},
        "records": records,
        "attention": attention,
        "model_quality": quality,
        "keys": key_channel_stats(acts),
    }


def main(argv=None) -> int:
    import argparse

    from labkit.bench.records import RESULTS_DIR

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(RESULTS_DIR))
    p.add_argument("--windows", type=int, default=32)
    p.add_argument("--length", type=int, default=512)
    args = p.parse_args(argv)
    res = run_study(windows=args.windows, length=args.length)
    path = Path(args.out) / "quant-accuracy_cpu.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    mq = res["model_quality"]
    print(f"positions {mq['positions']}, fp16-cache CE {mq['fp16_ce']:.4f}")
    for s in ("int8", "fp8_e4m3", "int8_channel_keys"):
        print(f"{s}: CE {mq[s]['ce']:.4f} ({100 * mq[s]['ce_rel_diff']:+.2f}%), agreement {100 * mq[s]['agreement']:.2f}%,"
              f" attention error random {res['attention']['random'][s]:.2e}, model {res['attention']['model_mean'][s]:.2e}")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["SCHEMES", "attention_errors", "capture_kv", "heldout_windows", "key_channel_stats", "model_activations",
           "model_quality", "quantized_cache", "run_study"]
