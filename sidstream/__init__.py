"""sidstream: real-time PSRQ semantic IDs and the MCCA ranker for music recommendation."""

__version__ = "0.1.0"
