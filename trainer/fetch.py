"""Fetch Last.fm-2k from its public origin and verify it against the recorded checksums."""

from __future__ import annotations

import logging
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from sidcore.datasets.lastfm import SHA256, DatasetError, verify

log = logging.getLogger(__name__)

LASTFM_URL = "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip"


class FetchError(RuntimeError):
    """The origin could not be reached or served something else than the expected files."""


def fetch_lastfm(out: Path, url: str = LASTFM_URL, timeout_s: float = 30.0) -> dict[str, str]:
    """Download the zip, extract the data files into `out`, verify every sha256; returns the digests."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "lastfm.zip"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, archive.open("wb") as fh:
                shutil.copyfileobj(response, fh)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise FetchError(
                f"could not download {url}: {exc}. If this machine has no internet access, copy the "
                f"HetRec 2011 Last.fm-2k files into {out} by hand and run `sidstream data verify --src {out}`."
            ) from exc
        try:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    name = Path(member).name
                    if name in SHA256 or name == "readme.txt":
                        (out / name).write_bytes(zf.read(member))
        except zipfile.BadZipFile as exc:
            raise FetchError(f"{url} did not serve a zip archive: {exc}") from exc
    try:
        return verify(out)
    except DatasetError as exc:
        raise FetchError(f"downloaded files do not match the recorded checksums: {exc}") from exc
