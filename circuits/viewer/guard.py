"""What stands between the viewer's app and a hostile page or client (ASGI middleware).

- DNS rebinding: a page on attacker.example whose name comes to resolve to 127.0.0.1 talks to us
  as if same-origin, but its requests carry `Host: attacker.example`. Only the names this server
  answers to are served (loopback names, plus what `--host` names): anything else is a 421.
- Cross-site requests that do work: a page on another origin can POST `text/plain` without a
  preflight. Every request with a body (POST, PUT, ...) must be `application/json` (415 otherwise)
  and carry the per-run token the served page holds (`X-Circuits-Token`; 403 otherwise); both make
  a browser ask first, and we answer no preflight. A request whose `Origin` is not this server is
  refused (403) whatever its method.
- Sizes: a body over MAX_BODY_BYTES is a 413, by its Content-Length or while it streams in.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import socket

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a qParams of thousands of pins, a prompt of many pages
TOKEN_HEADER = "x-circuits-token"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
SAFE_METHODS = frozenset({"GET", "HEAD"})


class ApiError(Exception):
    """A request the API refuses: status and one line for the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def new_token() -> str:
    return secrets.token_urlsafe(32)


def host_name(header: str) -> str | None:
    """The lower-case name of a Host header ("name", "name:port", "[v6]", "[v6]:port"); None if malformed."""
    header = header.strip().lower()
    if header.startswith("["):
        name, _, rest = header[1:].partition("]")
    else:
        name, _, port = header.partition(":")
        rest = f":{port}" if _ else ""
    if rest and not (rest.startswith(":") and rest[1:].isdigit() and len(rest) <= 6):
        return None
    if not name or any(c in name for c in "/@?#\\ []:") and not _is_ipv6(name):
        return None
    return name


def _is_ipv6(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).version == 6
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class AllowedHosts:
    """The Host names a server bound to `bind_host` answers to: loopback names; the name it was
    bound to; for a wildcard bind (0.0.0.0, ::) also this machine's names and any IP address
    (a rebinding attack needs a DNS name, never an address)."""

    def __init__(self, bind_host: str = "127.0.0.1"):
        bind = bind_host.strip().lower().strip("[]")
        self.names = set(LOOPBACK_NAMES)
        self.any_ip = bind in WILDCARDS
        if self.any_ip:
            self.names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        else:
            self.names.add(bind)

    def allows(self, name: str) -> bool:
        return name in self.names or (self.any_ip and _is_ip(name))


class Guard:
    """ASGI middleware: Host, Origin, content type, token and body size of every HTTP request."""

    def __init__(self, app, allowed: AllowedHosts, token: str, max_body: int = MAX_BODY_BYTES):
        self.app, self.allowed, self.token, self.max_body = app, allowed, token, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope["method"], headers)
        if refusal is not None:
            return await _send_error(send, *refusal)
        if scope["method"] not in SAFE_METHODS:
            receive = self._limited(receive)
        await self.app(scope, receive, send)

    def _refusal(self, method: str, headers: dict[str, str]) -> tuple[int, str] | None:
        host = headers.get("host", "")
        name = host_name(host)
        if name is None or not self.allowed.allows(name):
            shown = host[:80] or "(none)"
            return 421, (f"this server does not answer to Host {shown!r} (a guard against DNS rebinding): "
                         "open it as http://127.0.0.1:PORT/ or http://localhost:PORT/, or start it with "
                         "--host NAME")
        origin = headers.get("origin")
        if origin is not None and origin.lower() != f"http://{host.lower()}":
            return 403, f"requests from another origin ({origin[:80]}) are refused"
        if method in SAFE_METHODS:
            return None
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return 415, f"a {method} request needs Content-Type: application/json"
        if not hmac.compare_digest(headers.get(TOKEN_HEADER, "").encode(), self.token.encode()):
            return 403, ("a request that does work needs this run's token (X-Circuits-Token, from the "
                         "page the server serves)")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return 413, f"the request body is too large (at most {self.max_body} bytes)"
        return None

    def _limited(self, receive):
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise ApiError(413, f"the request body is too large (at most {self.max_body} bytes)")
            return message

        return limited_receive


async def _send_error(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
