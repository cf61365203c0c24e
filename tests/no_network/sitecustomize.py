"""No outbound connections from the test suite: loopback and this host's own addresses only.

The suite's conftest installs this guard in the test process and puts this
folder on ``PYTHONPATH``, so that Python child processes (``flwr run``, a
SuperNode, a worker, pip) import it as ``sitecustomize`` and are guarded too.
A test that quietly downloads then fails on every machine, not only on those
without a cache.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

ENV = "FEDROUTER_TESTS_NO_NETWORK"
# What tried to connect out, in this process (the conftest fails the test that did it).
attempts: list[str] = []


class NetworkBlockedError(ConnectionRefusedError):
    """A connection to a host outside this machine, refused in tests."""


@functools.lru_cache(maxsize=256)
def is_local(family: int, host: str) -> bool:
    """Whether ``host`` is this machine: loopback, unspecified, or one of its own interface addresses."""
    if family not in (socket.AF_INET, socket.AF_INET6):
        return True  # Unix sockets and the like never leave the machine
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:  # a host name: local when every address it resolves to is
        try:
            infos = socket.getaddrinfo(host, None, family)
        except OSError:
            return False
        return bool(infos) and all(is_local(info[0], str(info[4][0])) for info in infos)
    if address.is_loopback or address.is_unspecified:
        return True
    # Ray serves on the node's own address: only this machine's addresses can be bound to.
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
    except OSError:
        return False
    return True


def _checked(connect: Callable[..., Any]) -> Callable[..., Any]:
    """``socket.socket.connect`` (or ``connect_ex``), refusing addresses outside this machine."""

    @functools.wraps(connect)
    def guarded(self: socket.socket, address: Any, *args: Any) -> Any:
        if isinstance(address, tuple) and not is_local(self.family, str(address[0])):
            where = f"{address[0]}:{address[1]}"
            attempts.append(where)
            message = f"tests may not use the network: connection to {where} refused (tests/no_network)"
            print(message, file=sys.stderr)
            raise NetworkBlockedError(message)
        return connect(self, address, *args)

    return guarded


def install() -> None:
    """Refuse outbound connections in this process (idempotent)."""
    if not getattr(socket.socket.connect, "__wrapped__", None):
        socket.socket.connect = _checked(socket.socket.connect)  # type: ignore[method-assign]
        socket.socket.connect_ex = _checked(socket.socket.connect_ex)  # type: ignore[method-assign]


if os.environ.get(ENV) == "1":
    install()
