"""Access and size limits in front of `sidstream serve`, as plain ASGI (no per-request thread hop).

- Bearer tokens (settings.serve.tokens or serve.tokens_file): every route but the probes (/health,
  /ping) wants `Authorization: Bearer <token>`, compared in constant time with each valid token;
  401 otherwise. The token file is re-read when its modification time or size changes, so
  tokens rotate without a restart (add the new one, move the clients, remove the old one).
- Body limit (settings.serve.max_body_bytes): a declared Content-Length above it is refused (413)
  before any of the body is read; a body without one (chunked) is counted as it streams in and
  refused once it passes the limit, so no request holds more than the limit in memory.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from pydantic import SecretStr

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/ping"})  # the probes: a kubelet carries no token


class TokenSource:
    """The valid bearer tokens: fixed (comma-separated) or from a file re-read when it changes."""

    def __init__(self, tokens: SecretStr | None = None, token_file: Path | None = None) -> None:
        self._fixed = [t.strip() for t in tokens.get_secret_value().split(",") if t.strip()] if tokens else []
        self.token_file = token_file
        self._stamp: tuple[float, int] | None = None
        self._from_file: list[str] = []
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._fixed) or self.token_file is not None

    def current(self) -> list[bytes]:
        if self.token_file is None:
            return [t.encode() for t in self._fixed]
        try:
            st = os.stat(self.token_file)
        except OSError:  # a Secret being re-mounted: refuse everyone rather than anyone
            return []
        with self._lock:
            if self._stamp != (st.st_mtime, st.st_size):
                text = Path(self.token_file).read_text(encoding="utf-8")
                self._from_file = [line.strip() for line in text.splitlines() if line.strip()]
                self._stamp = (st.st_mtime, st.st_size)
                log.info("serve: %d bearer token(s) loaded from %s", len(self._from_file), self.token_file)
            return [t.encode() for t in self._from_file]

    def accepts(self, presented: bytes) -> bool:
        """Constant time in the presented token: every valid token is compared, none short-circuits."""
        ok = False
        for token in self.current():
            ok |= hmac.compare_digest(presented, token)
        return ok


def _bearer(scope: dict[str, Any]) -> bytes:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return b""


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Any, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: bearer tokens and the body limit (module docstring)."""

    def __init__(self, inner: Any, tokens: TokenSource, max_body_bytes: int) -> None:
        self.inner, self.tokens, self.max_body_bytes = inner, tokens, max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        if self.tokens.enabled and scope["path"] not in OPEN_PATHS and not self.tokens.accepts(_bearer(scope)):
            await _refuse(send, 401, "a valid bearer token is required", [(b"www-authenticate", b"Bearer")])
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _refuse(send, 413, f"body of {declared} bytes; the limit is {self.max_body_bytes} (serve.max_body_bytes)")
            return
        await self.inner(scope, self._capped(receive), send)

    def _capped(self, receive: Any) -> Any:
        seen = [0]

        async def capped_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.max_body_bytes:  # an HTTPException: the app answers 413 itself
                    raise HTTPException(413, f"body over {self.max_body_bytes} bytes (serve.max_body_bytes)")
            return message

        return capped_receive
