"""musicnn (Pons & Serra 2019) ported to PyTorch, with its trained MSD / MTT weights."""

from encoders.musicnn.encoder import MusicnnEncoder
from encoders.musicnn.weights import MSD_LABELS, MTT_LABELS, load_musicnn

__all__ = ["MSD_LABELS", "MTT_LABELS", "MusicnnEncoder", "load_musicnn"]
