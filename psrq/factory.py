"""Quantizers by method name."""

from __future__ import annotations

import inspect
from typing import Any

from psrq.base import Quantizer
from psrq.identity import IdentityPSRQ
from psrq.pq import PQ
from psrq.progressive import PSRQ
from psrq.rq import RQ
from psrq.rqvae import RQVAE
from psrq.vq import VQ

QUANTIZERS: dict[str, type[Quantizer]] = {"psrq_id": IdentityPSRQ, "psrq": PSRQ, "rq": RQ, "vq": VQ, "pq": PQ, "rqvae": RQVAE}
METHODS = tuple(QUANTIZERS)


def quantizer_class(method: str) -> type[Quantizer]:
    try:
        return QUANTIZERS[method]
    except KeyError:
        raise ValueError(f"unknown quantizer method {method!r}; expected one of {', '.join(METHODS)}") from None


def make_quantizer(method: str, codebook_sizes: Any, seed: int = 0, alpha: float = 1.0, **options: Any) -> Quantizer:
    """A fresh quantizer. `alpha` (prefix weight) applies to PSRQ only; other methods ignore it.

    Extra keyword options go to the method's constructor (e.g. prefix_scale, niter, epochs);
    an option the method does not take is a ValueError.
    """
    cls = quantizer_class(method)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "codebook_sizes", "seed"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"{method} does not take option(s) {unknown}; it takes {sorted(accepted)}")
    if "alpha" in accepted:
        options["alpha"] = alpha
    return cls(codebook_sizes, seed=seed, **options)
