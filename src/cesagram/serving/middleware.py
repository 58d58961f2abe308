"""The service's ASGI middleware: JSON bodies only, and API-key authentication.

Every API call needs a key in the configured header (``X-API-Key``) or as a bearer token;
probes (``/livez``, ``/readyz``), metrics and the API documentation stay open so that an
orchestrator can watch the service without a key. Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from cesagram.serving.settings import Auth

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/"})
OPEN_PREFIXES = ("/docs", "/static_content")

Scope = dict[str, Any]
Receive = Any
Send = Any


def _is_open(scope: Scope) -> bool:
    path = str(scope.get("path", ""))
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


async def send_json_error(
    send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer with ``{"error": message}`` and ``status``."""
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class JsonBodiesOnly:
    """Refuses API calls whose body is declared as anything but JSON with 415.

    Every API takes JSON; BentoML would otherwise try other parsers (a multipart body without
    a boundary ends in a 500).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _is_open(scope):
            declared = dict(scope.get("headers", [])).get(b"content-type", b"application/json")
            media_type = declared.split(b";")[0].strip().lower()
            if media_type not in (b"", b"application/json"):
                await send_json_error(send, 415, "the APIs take JSON (application/json)")
                return
        await self.app(scope, receive, send)


class ApiKeyMiddleware:
    """Refuses requests without a valid key with 401, before they reach an API."""

    def __init__(self, app: Any, *, auth: Auth) -> None:
        keys = auth.keys()
        if not keys:
            raise RuntimeError(
                f"no API keys: set {auth.keys_env} (comma-separated keys) before starting the "
                "service, or set serving.auth.required=false for local development only"
            )
        self.app = app
        self.keys = [key.encode() for key in keys]
        self.header = auth.header.lower().encode()

    def _presented(self, scope: Scope) -> bytes | None:
        for name, value in scope.get("headers", []):
            if name == self.header:
                return bytes(value)
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                return bytes(value[7:].strip())
        return None

    def allowed(self, scope: Scope) -> bool:
        """Whether the request may pass: an open path, or a key that matches one configured."""
        if _is_open(scope):
            return True
        presented = self._presented(scope)
        if presented is None:
            return False
        # Compare with every key, so the time taken does not tell which one nearly matched.
        matches = [hmac.compare_digest(presented, key) for key in self.keys]
        return any(matches)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        await send_json_error(
            send, 401, "missing or invalid API key", [(b"www-authenticate", b"Bearer")]
        )
