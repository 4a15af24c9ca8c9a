"""Ochre's frame tokenizer: a VQ-VAE (FSQ or EMA VQ) turning 128x72 frames into 32x18 code grids.

The one loading API: `from vq_vae import load_tokenizer`. Training: `python -m vq_vae.train`.
"""
from vq_vae.tokenizer import Tokenizer, load_tokenizer

__all__ = ["Tokenizer", "load_tokenizer"]
