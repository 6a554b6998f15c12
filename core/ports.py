"""Where the app and the endpoint listen: a port flag's check, and the port tried before any
heavy work, so a typo or a taken port is one line at once instead of a traceback after the
model has loaded (Gradio's launch, and uvicorn's, fail only then; uvicorn hung on port 99999).

    python app.py --port 7860
    python cli.py serve --port 8000
"""
from __future__ import annotations

import argparse
import os
import socket

from core.errors import LabError


def port_number(text: str) -> int:
    """argparse type for --port: a TCP port, 1-65535."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: use a port from 1 to 65535")
    return port


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (IPv4 or IPv6, as the host reads), for a server to serve on;
    LabError naming the address when it is taken or the host is unknown."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:  # taken, not this machine's address, or no such host
        # os.strerror: bind's own text adds the address again; a lookup's errno is negative
        reason = os.strerror(exc.errno) if (exc.errno or 0) > 0 else (exc.strerror or str(exc))
        raise LabError(f"cannot listen on {host}:{port}: {reason}.") from None


def check_free(host: str, port: int) -> None:
    """Raise LabError when host:port cannot be listened on now (for a server that binds itself)."""
    listening_socket(host, port).close()
