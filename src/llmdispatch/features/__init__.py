"""features layer: request → vectors (hashed n-gram TF-IDF, sentence embeddings, remote).

Encoders register by name (``tfidf`` is the default; ``tfidf-svd``, ``minilm``, ``static``,
``remote``, ``scalar``, ``concat``, ``cached``); heavy dependencies load only when used.
"""

from llmdispatch.features._util import MissingExtraError
from llmdispatch.features.base import Encoder
from llmdispatch.features.cache import (
    CachedEncoder,
    EncodingCache,
    cache_root,
    encode_with_cache,
)
from llmdispatch.features.concat import ConcatEncoder
from llmdispatch.features.distill import distill_static
from llmdispatch.features.hashing import NgramHasher
from llmdispatch.features.lsa import TfidfSvdEncoder
from llmdispatch.features.minilm import SentenceTransformerEncoder
from llmdispatch.features.remote import RemoteEncoder, RemoteEncoderError
from llmdispatch.features.scalar import FEATURE_NAMES, ScalarEncoder, dominant_script
from llmdispatch.features.static import StaticEncoder, static_model_dir
from llmdispatch.features.tfidf import TfidfEncoder

#: The encoder used when a config names none.
DEFAULT_ENCODER = "tfidf"

__all__ = [
    "DEFAULT_ENCODER",
    "FEATURE_NAMES",
    "CachedEncoder",
    "ConcatEncoder",
    "Encoder",
    "EncodingCache",
    "MissingExtraError",
    "NgramHasher",
    "RemoteEncoder",
    "RemoteEncoderError",
    "ScalarEncoder",
    "SentenceTransformerEncoder",
    "StaticEncoder",
    "TfidfEncoder",
    "TfidfSvdEncoder",
    "cache_root",
    "distill_static",
    "dominant_script",
    "encode_with_cache",
    "static_model_dir",
]
