"""PSRQ semantic IDs: quantizers (PSRQ, RQ-KMeans, VQ, PQ, RQ-VAE), codebook artifacts, health.

Pure numpy / torch / faiss; knows nothing of Kafka or Feast.
"""

from psrq.artifact import fingerprint, load_codebook, read_manifest, save_codebook
from psrq.base import Quantizer
from psrq.codebook_set import CodebookSet, joint_embedding, load_codebook_set, save_codebook_set
from psrq.factory import METHODS, make_quantizer

__all__ = [
    "METHODS",
    "CodebookSet",
    "Quantizer",
    "fingerprint",
    "joint_embedding",
    "load_codebook",
    "load_codebook_set",
    "make_quantizer",
    "read_manifest",
    "save_codebook",
    "save_codebook_set",
]
