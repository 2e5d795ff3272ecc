"""A character tokenizer: one token per character of the training text; nothing fetched.

Characters keep the vocabulary tiny (65 for Shakespeare), which makes a small draft model
agree with the target often: good for speculative decoding's acceptance rate.
"""

from __future__ import annotations

import json

import torch


class CharTokenizer:
    """Maps each character of ``vocab`` (a string of distinct characters) to its index."""

    def __init__(self, vocab: str):
        if len(set(vocab)) != len(vocab) or not vocab:
            raise ValueError("vocab must be a non-empty string of distinct characters")
        self.vocab = vocab
        self._index = {c: i for i, c in enumerate(vocab)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._index[c] for c in text]
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} is not in the tokenizer's vocabulary "
                             f"({self.vocab_size} characters)") from None

    def encode_tensor(self, text: str, device=None) -> torch.Tensor:
        """[1, len(text)] int64: a batch of one prompt."""
        return torch.tensor([self.encode(text)], dtype=torch.long, device=device)

    def decode(self, tokens) -> str:
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.reshape(-1).tolist()
        return "".join(self.vocab[t] for t in tokens)

    def to_json(self) -> str:
        return json.dumps(self.vocab)

    @classmethod
    def from_json(cls, text: str) -> "CharTokenizer":
        return cls(json.loads(text))
