"""Running the routes (:mod:`.app`) on uvicorn: bind first, so that a taken port or a wrong host is a clear error
before anything is served and ``--port 0`` can say which port it got; loopback unless told otherwise."""
from __future__ import annotations

import errno
import ipaddress
import os
import socket

from ..errors import PrunekitError

__all__ = ["TOKEN_VARIABLE", "bind", "is_loopback", "run_server", "token_from_environment"]

TOKEN_VARIABLE = "PRUNEKIT_SERVE_TOKEN"


def token_from_environment() -> str | None:
    """The bearer token for task changes, from ``PRUNEKIT_SERVE_TOKEN`` (unset: changes switched off)."""
    token = os.environ.get(TOKEN_VARIABLE)
    if token is None:
        return None
    if not token.strip():
        raise PrunekitError(f"{TOKEN_VARIABLE} is set but empty: set it to a secret (e.g. `openssl rand -hex 32`) "
                            "or unset it to switch task changes off")
    return token.strip()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise PrunekitError(f"--host {host!r}: not an address or a name this machine resolves ({e.strerror})"
                            ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PrunekitError(f"--port {port}: {host}:{port} is in use; pick another port, or --port 0 for any "
                                "free one") from None
        raise PrunekitError(f"--host {host!r} --port {port}: cannot listen there ({e.strerror})") from None
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
        return all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)
    except (socket.gaierror, ValueError):
        return False


def run_server(app, sock: socket.socket, *, log_level: str = "info") -> None:
    """Serve ``app`` on ``sock`` until SIGINT / SIGTERM (uvicorn stops gracefully: requests in flight finish).

    What is loaded by now (torch, the model, the framework: most of the process's objects, and they live as long as
    it does) is frozen out of Python's garbage collector first (``gc.freeze``): otherwise every full collection walks
    them all, and each one stalls every request in flight (it was the p99 of bench/tasks.py's serving rows)."""
    import gc

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=log_level in ("debug", "info")))
    gc.collect()
    gc.freeze()
    server.run(sockets=[sock])
