"""Plain and speculative decoding with every step's device work in one CUDA graph replay.

Both loops run on :class:`~labkit.decoding.engine.StaticEngine` and keep their state on the
device: the sequence ``seq`` and its length ``n``. The host only replays graphs and, now and
then, reads ``n`` to know when to stop, so the GPU never waits for Python.

- :class:`PlainDecoder`: one graph is K single-token target steps, each step's argmax (or
  sample) feeding the next on the device — the honest baseline, as optimised as the rest.
- :class:`SpeculativeDecoder`: one graph is one round: γ draft steps (the first feeds the
  last two tokens, so whether or not the previous round accepted every draft token the
  draft cache needs no branch), one target pass over the γ + 1 positions, acceptance on the
  device, ``seq`` and ``n`` updated. Greedy: the new tokens are the target's argmaxes
  ``best[0 .. n_acc]`` (accepted draft tokens equal them). Sampling: :func:`accept_draft`.
  The host launches ``ceil(remaining / (γ + 1))`` rounds — each yields at least one token, so
  none is wasted — then reads ``n`` once, and repeats.

On :class:`~labkit.decoding.triton_engine.TritonEngine` engines a greedy step or round is Triton
kernels only: each pass reads its tokens from ``seq`` at positions relative to ``n`` and writes
its argmax back, and the verifying pass accepts and advances ``n`` itself (no PyTorch op at all).

``Generation.seconds`` is the decode loop (what tokens per second measure); the prefill,
eager and the same for both, is in ``extra["prefill_seconds"]``.
"""

from __future__ import annotations

import time

import torch

from labkit.decoding.engine import StaticEngine
from labkit.decoding.graphs import Replay
from labkit.decoding.generate import Generation, _device, as_prompt
from labkit.decoding.sampling import check_sampling, probs, sample
from labkit.decoding.speculative import accept_draft, check_pair

try:
    from labkit.decoding.triton_engine import BLOCK_S, TritonEngine
except ModuleNotFoundError as _exc:  # no Triton (macOS, Windows): the PyTorch engine still decodes
    if not (_exc.name or "").startswith("triton"):
        raise
    BLOCK_S = 0

    class TritonEngine:  # noqa: D101 - a stand-in that says why it can't run
        def __init__(self, *args, **kwargs):
            raise RuntimeError("engine='triton' needs Triton, which installs on Linux only: run this on Colab or a "
                               "Linux machine, or use engine='torch'")


def _pick(logits: torch.Tensor, temperature: float, out: torch.Tensor) -> torch.Tensor | None:
    """Next token of logits [1, V] into out [1]; returns the distribution when sampling."""
    if temperature == 0:
        torch.argmax(logits, -1, out=out)
        return None
    q = probs(logits[0], temperature)
    out.copy_(sample(q))
    return q


def _prompt(prompt, device, at_least: int) -> torch.Tensor:
    p = as_prompt(prompt, device)[0]
    if p.numel() < at_least:
        raise ValueError(f"prompt must have at least {at_least} tokens here, got {p.numel()}")
    return p


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PlainDecoder:
    """Plain decoding at batch 1, ``steps_per_graph`` target steps per graph replay."""

    def __init__(self, engine: StaticEngine, *, temperature: float = 0.0, steps_per_graph: int = 8,
                 graphs: bool | None = None):
        check_sampling(temperature, None, None)
        if steps_per_graph < 1:
            raise ValueError(f"steps_per_graph must be at least 1, got {steps_per_graph}")
        self.e, self.K, self.temperature = engine, steps_per_graph, temperature
        dev = engine.device
        self.seq = torch.zeros(engine.T + steps_per_graph + 1, dtype=torch.long, device=dev)
        self.n = torch.full((), 1, dtype=torch.long, device=dev)  # tokens in seq
        self.blk = torch.zeros(steps_per_graph + 1, dtype=torch.long, device=dev)
        self.offsets = torch.arange(-1, steps_per_graph - 1, device=dev)
        self.fused = isinstance(engine, TritonEngine) and temperature == 0
        self.replay = Replay(self._block, dev.type == "cuda" if graphs is None else graphs)

    def _block(self) -> None:
        e, K = self.e, self.K
        if self.fused:  # each pass feeds seq[n-1], writes seq[n] and advances n on the device
            for _ in range(K):
                e.run_pass(self.seq, self.n, -1, 1, advance=True)
            return
        pos = self.offsets + self.n  # [K]: positions n-1 .. n+K-2 of the K tokens fed
        rot, mask = e.tables(pos)
        torch.index_select(self.seq, 0, pos[:1], out=self.blk[:1])
        for i in range(K):
            logits = e.forward(self.blk[i:i + 1], pos[i:i + 1], rot[i:i + 1], mask[i:i + 1], last_only=True)
            _pick(logits, self.temperature, self.blk[i + 1:i + 2])
        self.seq.index_copy_(0, pos + 1, self.blk[1:])
        self.n.add_(K)

    def run(self, prompt, max_new_tokens: int) -> Generation:
        """Decode ``max_new_tokens`` after ``prompt`` (list of ids or [1, P] int64)."""
        p = _prompt(prompt, self.e.device, 1)
        P, K = p.numel(), self.K
        if P + max_new_tokens + K > self.e.T:
            raise ValueError(f"prompt ({P}) + new tokens ({max_new_tokens}) + steps_per_graph ({K}) exceed "
                             f"the engine's max_len={self.e.T}")
        self.seq[:P].copy_(p)
        self.n.fill_(P)
        t0 = time.perf_counter()
        if P > 1:
            self.e.prefill(self.seq[:P - 1])
        _sync(self.e.device)
        t1 = time.perf_counter()
        blocks = -(-max_new_tokens // K)
        for _ in range(blocks):
            self.replay()
        tokens = self.seq[P:P + max_new_tokens].tolist()
        seconds = time.perf_counter() - t1
        return Generation(tokens=tokens, target_passes=blocks * K, produced=blocks * K, seconds=seconds,
                          extra={"prefill_seconds": t1 - t0, "steps_per_graph": K})


class SpeculativeDecoder:
    """Speculative decoding at batch 1, one round (γ draft steps + one target pass) per graph replay."""

    def __init__(self, target: StaticEngine, draft: StaticEngine, gamma: int, *, temperature: float = 0.0,
                 graphs: bool | None = None):
        check_sampling(temperature, None, None)
        check_pair(target.config, draft.config, gamma)
        self.t, self.d, self.gamma, self.temperature = target, draft, gamma, temperature
        self.T = min(target.T, draft.T)
        self.shared = target.compatible(draft)
        dev, g = target.device, gamma
        self.seq = torch.zeros(self.T + g + 2, dtype=torch.long, device=dev)
        self.n = torch.full((), 2, dtype=torch.long, device=dev)
        self.tok = torch.zeros(g + 2, dtype=torch.long, device=dev)  # [seq[n-2], seq[n-1], d_1 .. d_γ]
        self.offsets = torch.arange(-2, g + 1, device=dev)
        self.mismatch = torch.zeros(g + 2, dtype=torch.long, device=dev)
        self.mismatch[-1] = 1  # argmax(mismatch) = index of the first mismatch + 1 = tokens this round
        self.counts = torch.zeros(g + 2, dtype=torch.long, device=dev)  # counts[k]: rounds that yielded k
        self.one = torch.ones(1, dtype=torch.long, device=dev)
        self.q = torch.zeros(g, target.config.vocab_size, dtype=torch.float32, device=dev)
        self.fused = isinstance(target, TritonEngine) and isinstance(draft, TritonEngine) and temperature == 0
        if self.fused and gamma + 1 > BLOCK_S:
            raise ValueError(f"gamma must be at most {BLOCK_S - 1} with Triton engines (a pass holds {BLOCK_S} "
                             f"tokens), got {gamma}")
        self.replay = Replay(self._round, dev.type == "cuda" if graphs is None else graphs)

    def _fused_round(self) -> None:
        """γ + 1 Triton passes, every token read from and written to ``seq`` (see TritonEngine)."""
        g = self.gamma
        self.d.run_pass(self.seq, self.n, -2, 2)  # seq[n-2], seq[n-1] -> d_1 at seq[n]
        for j in range(2, g + 1):  # d_{j-1} at position n+j-2 -> d_j at seq[n+j-1]
            self.d.run_pass(self.seq, self.n, j - 2, 1)
        self.t.run_pass(self.seq, self.n, -1, g + 1, counts=self.counts)  # accept, write, advance n

    def _round(self) -> None:
        if self.fused:
            self._fused_round()
            return
        t, d, g, temp = self.t, self.d, self.gamma, self.temperature
        pos = self.offsets + self.n  # [γ+3]: n-2 .. n+γ; tok[i] sits at pos[i]
        rot, mask = t.tables(pos[:g + 2])
        drot, dmask = (rot, mask) if self.shared else d.tables(pos[:g + 2])
        torch.index_select(self.seq, 0, pos[:2], out=self.tok[:2])
        for j in range(1, g + 1):  # draft step j feeds tok[0:2] (j = 1) or tok[j] = d_{j-1}
            a = 0 if j == 1 else j
            logits = d.forward(self.tok[a:j + 1], pos[a:j + 1], drot[a:j + 1], dmask[a:j + 1], last_only=True)
            q = _pick(logits, temp, self.tok[j + 1:j + 2])
            if q is not None:
                self.q[j - 1].copy_(q)
        logits = t.forward(self.tok[1:], pos[1:g + 2], rot[1:], mask[1:])  # [γ+1, V]: one target pass
        if temp == 0:
            best = logits.argmax(-1)
            torch.ne(best[:g], self.tok[2:], out=self.mismatch[1:g + 1])
            k = self.mismatch.argmax()  # 1 + accepted draft tokens
            self.seq.index_copy_(0, pos[2:], best)  # best[0 .. k-1] are the new tokens; the rest get overwritten
        else:
            n_acc, nxt = accept_draft(probs(logits, temp), self.q, self.tok[2:])
            self.seq.index_copy_(0, pos[2:g + 2], self.tok[2:])
            self.seq.index_put_(((self.n + n_acc).view(1),), nxt.view(1))
            k = n_acc + 1
        self.n.add_(k)
        self.counts.index_add_(0, k.view(1), self.one)

    def run(self, prompt, max_new_tokens: int) -> Generation:
        """Decode ``max_new_tokens`` after ``prompt`` (at least 2 tokens)."""
        p = _prompt(prompt, self.t.device, 2)
        P, g = p.numel(), self.gamma
        if P + max_new_tokens + g + 1 > self.T:
            raise ValueError(f"prompt ({P}) + new tokens ({max_new_tokens}) + gamma + 1 exceed the engines' "
                             f"max_len={self.T}")
        self.seq[:P].copy_(p)
        self.n.fill_(P)
        self.counts.zero_()
        t0 = time.perf_counter()
        self.t.prefill(self.seq[:P - 1])
        self.d.prefill(self.seq[:P - 1])
        _sync(self.t.device)
        t1 = time.perf_counter()
        have = rounds = 0
        while have < max_new_tokens:
            k = -(-(max_new_tokens - have) // (g + 1))  # rounds surely needed: none overshoots the end
            for _ in range(k):
                self.replay()
            rounds += k
            have = int(self.n) - P  # the only read-back: once per batch of rounds
        tokens = self.seq[P:P + max_new_tokens].tolist()
        seconds = time.perf_counter() - t1
        counts = self.counts.tolist()
        accepted = sum((k - 1) * c for k, c in enumerate(counts) if k)
        return Generation(tokens=tokens, target_passes=rounds, draft_passes=rounds * g, proposed=rounds * g,
                          accepted=accepted, evaluated=accepted + rounds - counts[g + 1], produced=have,
                          seconds=seconds, extra={"gamma": g, "rounds": rounds, "prefill_seconds": t1 - t0})

    def first_tokens(self, prompt, draws: int) -> torch.Tensor:
        """The first new token of ``draws`` independent rounds from ``prompt``: int64 [draws].

        For statistical tests of the rule: one prefill, then each round starts again from the
        prompt (the caches' prompt slots are never overwritten by a round). No host sync per draw.
        """
        p = _prompt(prompt, self.t.device, 2)
        P = p.numel()
        if P + self.gamma + 1 > self.T:
            raise ValueError(f"prompt ({P}) + gamma + 1 exceed the engines' max_len={self.T}")
        self.seq[:P].copy_(p)
        self.t.prefill(self.seq[:P - 1])
        self.d.prefill(self.seq[:P - 1])
        out = torch.empty(draws, dtype=torch.long, device=self.t.device)
        for i in range(draws):
            self.n.fill_(P)
            self.replay()
            out[i] = self.seq[P]
        return out


ENGINES = {"torch": StaticEngine, "triton": TritonEngine}  # what a pass runs on: PyTorch ops, or Triton kernels


def fast_generate(model, prompt, max_new_tokens: int, *, temperature: float = 0.0, steps_per_graph: int = 8,
                  graphs: bool | None = None, linear="mm", engine: str = "torch") -> Generation:
    """:class:`PlainDecoder` on a fresh engine: same tokens as ``generate(model, ...)`` when greedy.

    engine: ``"torch"`` (:class:`StaticEngine`) or ``"triton"`` (:class:`TritonEngine`, greedy
    passes in Triton kernels; sampling still runs the PyTorch pass)."""
    n = as_prompt(prompt, _device(model)).shape[1] + max_new_tokens + steps_per_graph
    engine = engine_class(engine)(model, n, linear=linear)
    return PlainDecoder(engine, temperature=temperature, steps_per_graph=steps_per_graph, graphs=graphs).run(
        prompt, max_new_tokens)


def fast_speculative_generate(target, draft, prompt, max_new_tokens: int, *, gamma: int = 4,
                              temperature: float = 0.0, graphs: bool | None = None, linear="mm",
                              engine: str = "torch") -> Generation:
    """:class:`SpeculativeDecoder` on fresh engines: greedy output equals ``generate(target, ...)``'s.

    engine: ``"torch"`` or ``"triton"``, as for :func:`fast_generate`."""
    n = as_prompt(prompt, _device(target)).shape[1] + max_new_tokens + gamma + 1
    cls = engine_class(engine)
    dec = SpeculativeDecoder(cls(target, n, linear=linear), cls(draft, n, linear=linear), gamma,
                             temperature=temperature, graphs=graphs)
    return dec.run(prompt, max_new_tokens)


def engine_class(name: str):
    """:class:`StaticEngine` for ``"torch"``, :class:`TritonEngine` for ``"triton"``; a clear error otherwise."""
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {sorted(ENGINES)}, got {name!r}")
    return ENGINES[name]
