"""Modalities by name: which two embedding arrays of a data set play the paper's text and audio roles.

The dataset contract's `embeddings/<name>.npy` takes any name. The models know three roles:
"text" and "audio" (the modality-specific codebooks) and "joint" (PSRQ on l2(text) ⊕ l2(audio),
trainer.codes.with_joint). `assign_roles` returns a data set whose embeddings are keyed by role
and the map back to the given names, so results can name each modality as the user did.

Rules (docs/evaluation.md): a named modality must have its array (no silent fallback to the items'
text: `embed_text` makes that explicit) and a row for every item of the catalog (no silent
"missing" rows); with the default names `text,audio`, a data set with only `text` runs text-only.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import pandas as pd

from trainer.dataset import Dataset, DatasetContractError
from trainer.embeddings import TextEncoding, text_embeddings

log = logging.getLogger(__name__)

ROLES = ("text", "audio")
JOINT = "joint"
DEFAULT = ("text", "audio")


class ModalityError(DatasetContractError):
    """A modality the run asks for is absent or incomplete; the message says which and how many rows."""


def parse_modalities(value: str | None) -> tuple[str, str] | None:
    """`A,B` -> (A, B); None stays None (the default names, audio optional)."""
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if len(names) != 2 or names[0] == names[1]:
        raise ModalityError(f"--modalities takes two different names A,B (the text and audio roles), got {value!r}")
    if JOINT in names:
        raise ModalityError(f"{JOINT!r} is the name of the fused modality the run builds; name the two inputs")
    return names[0], names[1]


def _catalog(ds: Dataset) -> list[str]:
    return sorted(set(ds.items["item_id"]) | set(ds.interactions["item_id"]))


def assign_roles(ds: Dataset, names: tuple[str, str] | None, embed_text: TextEncoding | None = None) -> tuple[Dataset, dict[str, str]]:
    """(a data set with embeddings keyed by role, {role: given name}); ModalityError when a named
    modality has no array or lacks rows for some items."""
    explicit = names is not None
    wanted = dict(zip(ROLES, names or DEFAULT, strict=True))
    where = f"{ds.root}/embeddings" if ds.root is not None else "the data set's embeddings"
    have = sorted(ds.embeddings)
    catalog = _catalog(ds)
    out: dict[str, np.ndarray] = {}
    roles: dict[str, str] = {}
    ids = list(ds.embedding_ids)
    for role, name in wanted.items():
        if name in ds.embeddings:
            X = ds.embeddings[name]
            src_ids = ids
        elif name == "text" and embed_text is not None and not ds.items.empty:
            log.info("encoding the items' text as the %r modality (--embed-text)", name)
            X, src_ids = text_embeddings(ds.items, embed_text), ds.items["item_id"].tolist()
        elif explicit or role == "text":
            hint = " (or --embed-text to encode the items' text)" if name == "text" else ""
            raise ModalityError(f"no {name}.npy in {where} for the {role} role (arrays: {', '.join(have) or 'none'}){hint}")
        else:
            log.info("no %s.npy: a %s-only run", name, wanted["text"])
            continue
        row = pd.Series(np.arange(len(src_ids)), index=pd.Index(src_ids)).reindex(catalog).to_numpy()
        absent = np.isnan(row)
        aligned = np.full((len(catalog), X.shape[1]), np.nan, dtype=np.float32)
        aligned[~absent] = X[row[~absent].astype(np.int64)]
        missing = int(np.isnan(aligned).any(axis=1).sum())
        if missing:
            raise ModalityError(f"{name}: {missing} of {len(catalog)} items have no row (absent from ids.txt or NaN) in "
                                f"{name}.npy; every item needs one (restrict the data set to the items that have it)")
        out[role] = aligned
        roles[role] = name
    if len(roles) == 2:
        roles[JOINT] = f"{roles['text']}+{roles['audio']}"
    renamed = Dataset(ds.interactions, ds.items, out, catalog, {**ds.info, "modalities": roles}, ds.root)
    return renamed, roles


def given_names(obj: Any, roles: dict[str, str]) -> Any:
    """A result with its modality keys (distinct_sids, codebook sizes) renamed from roles to given names."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in ("distinct_sids", "codebook_sizes", "sizes") and isinstance(v, dict):
                out[k] = {roles.get(m, m): n for m, n in v.items()}
            else:
                out[k] = given_names(v, roles)
        return out
    if isinstance(obj, list):
        return [given_names(v, roles) for v in obj]
    return obj


def model_name_to_roles(name: str, roles: dict[str, str]) -> str:
    """`din+psrq@m=<given name>` -> `din+psrq@m=<role>` (role names pass unchanged)."""
    back = {given: role for role, given in roles.items()}

    def sub(m: re.Match[str]) -> str:
        return f"m={back.get(m.group(1), m.group(1))}"

    return re.sub(r"m=([^,@]+)", sub, name)
