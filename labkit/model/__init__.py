"""A small decoder-only transformer, its character tokenizer, its model files and a GPT-2 loader.

    model, tok = load_model("target")            # data/models/target.safetensors
    logits = model(tok.encode_tensor("ROMEO:", device=labkit.device()))
"""

from labkit.model.config import ModelConfig, preset
from labkit.model.corpus import heldout_prompts, load_text, split
from labkit.model.tokenizer import CharTokenizer
from labkit.model.transformer import Transformer
from labkit.model.weights import load_model, model_path, read_metadata, save_model

__all__ = ["CharTokenizer", "ModelConfig", "Transformer", "heldout_prompts", "load_model", "load_text",
           "model_path", "preset", "read_metadata", "save_model", "split"]
