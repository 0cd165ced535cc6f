"""features layer: request → vectors (hashed n-gram TF-IDF, sentence embeddings, remote)."""

from llmdispatch.features.base import Encoder

__all__ = ["Encoder"]
