"""Model files: safetensors holding the weights (fp16) and, in the metadata, the config, the
tokenizer's vocabulary and how the weights were trained (steps, loss, date, device).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from labkit.model.config import ModelConfig
from labkit.model.corpus import DATA_DIR
from labkit.model.tokenizer import CharTokenizer
from labkit.model.transformer import Transformer

MODELS_DIR = DATA_DIR / "models"


def model_path(name_or_path) -> Path:
    """``"target"``/``"draft"`` name the shipped models in data/models/; anything else is a path."""
    p = Path(name_or_path)
    if p.suffix != ".safetensors" and len(p.parts) == 1:
        p = MODELS_DIR / f"{p}.safetensors"
    if not p.exists():
        raise FileNotFoundError(f"no model file at {p} (train one with `python -m labkit.model.train`)")
    return p


def save_model(model: Transformer, path, tokenizer: CharTokenizer, training: dict | None = None,
               dtype: torch.dtype = torch.float16) -> Path:
    """Write ``model``'s weights in ``dtype`` with its config, vocab and training info as metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    meta = {"labkit_config": model.config.with_(dropout=0.0).to_json(), "labkit_vocab": tokenizer.to_json(),
            "labkit_training": json.dumps(training or {}, sort_keys=True)}
    save_file(tensors, str(path), metadata=meta)
    return path


def read_metadata(name_or_path) -> dict:
    """``{"config": ModelConfig, "tokenizer": CharTokenizer, "training": dict}`` without loading weights."""
    with safe_open(str(model_path(name_or_path)), framework="pt") as f:
        meta = f.metadata() or {}
    if "labkit_config" not in meta:
        raise ValueError(f"{name_or_path} has no labkit_config metadata: not a labkit model file")
    return {"config": ModelConfig.from_json(meta["labkit_config"]),
            "tokenizer": CharTokenizer.from_json(meta["labkit_vocab"]),
            "training": json.loads(meta.get("labkit_training", "{}"))}


def load_model(name_or_path, *, dtype: torch.dtype | None = None, device=None) -> tuple[Transformer, CharTokenizer]:
    """Load a model file; returns (model in eval mode, tokenizer).

    dtype: default fp16 on a GPU and fp32 on the CPU (fp16 matmuls are slow there).
    device: default :func:`labkit.runtime.device`.
    """
    from labkit import runtime

    path = model_path(name_or_path)
    info = read_metadata(path)
    device = torch.device(device) if device is not None else runtime.device()
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    model = Transformer(info["config"])
    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: missing tensors {missing}, unexpected tensors {unexpected}")
    model.training_info = info["training"]
    return model.to(device=device, dtype=dtype).eval(), info["tokenizer"]
