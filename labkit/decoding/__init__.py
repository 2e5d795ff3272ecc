"""Decoding: sampling, plain generation with a KV cache, and speculative decoding.

    out = generate(target, prompt, 100)                              # one target pass per token
    out = speculative_generate(target, draft, prompt, 100, gamma=4)  # same tokens, fewer passes
    out.tokens, out.alpha, out.tokens_per_pass, out.seconds
    out = fast_speculative_generate(target, draft, prompt, 100)      # the same, each round one CUDA graph
    out = fast_speculative_generate(target, draft, prompt, 100, engine="triton")  # a layer in 3 Triton kernels
"""

from labkit.decoding.fast import fast_generate, fast_speculative_generate
from labkit.decoding.generate import Generation, generate
from labkit.decoding.sampling import probs, sample, sample_logits
from labkit.decoding.speculative import (accept_draft, expected_tokens_per_pass, speculative_generate,
                                         speculative_round)
from labkit.decoding.stats import chi_square, counts_of

__all__ = ["Generation", "accept_draft", "chi_square", "counts_of", "expected_tokens_per_pass", "fast_generate",
           "fast_speculative_generate", "generate", "probs", "sample", "sample_logits", "speculative_generate",
           "speculative_round"]
