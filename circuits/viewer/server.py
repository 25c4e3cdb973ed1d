"""Run the viewer: bind the address first (a port in use is one clear error), then uvicorn on it.

Ctrl-C (SIGINT) or SIGTERM: uvicorn finishes open requests and returns; the command prints
"viewer stopped" and exits 0. (uvicorn re-raises the signal it caught once it has shut down: for
SIGTERM that would kill the process with status 143, so SIGTERM is turned into an exception here.)
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import threading
import webbrowser
from typing import Callable

from circuits.errors import CircuitsError

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 picks a free one."""
    if not 0 <= port <= 65535:
        raise CircuitsError(f"--port must lie in 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise CircuitsError(f"cannot resolve host {host!r}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno in (98, 48):  # EADDRINUSE (Linux, macOS)
            raise CircuitsError(f"port {port} on {host} is in use; choose another with --port "
                                "(or --port 0 for any free port)") from None
        raise CircuitsError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


class Terminated(Exception):
    """SIGTERM arrived (raised by the handler `run` installs)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def run(app, sock: socket.socket, url: str, open_browser: bool = False,
        echo: Callable[[str], None] = print) -> None:
    """Serve `app` on `sock` until Ctrl-C or SIGTERM (from the main thread)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    echo(f"viewer at {url}  (Ctrl-C to stop)")
    if open_browser:
        def open_page() -> None:
            if not webbrowser.open(url):
                echo(f"no browser found here: open {url} yourself")
        threading.Timer(0.5, open_page).start()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, Terminated):  # uvicorn shut down gracefully, then re-raised the signal
        pass
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        sock.close()
    echo("viewer stopped")


class ServerThread:
    """The app served by uvicorn in a background thread on a free loopback port (tests, benchmarks)."""

    def __init__(self, app, host: str = "127.0.0.1"):
        import time

        import uvicorn

        sock = bind(host, 0)
        self.app = app
        self.url = url_of(sock, host)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            raise RuntimeError("the viewer server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
