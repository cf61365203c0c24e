"""Write (or update) a SuperLink connection in the Flower configuration, the same way every time.

``flwr run . <name>`` reads SuperLink connections from ``$FLWR_HOME/config.toml``
(``~/.flwr/config.toml`` when ``FLWR_HOME`` is unset). This command writes the
entry ``[superlink.<name>]`` through Flower's own configuration code: it
creates the file with Flower's defaults (``[superlink] default = "local"``)
when there is none, replaces an earlier entry of that name rather than adding
a second one, and leaves every other entry alone, so running it again changes
nothing. ``--wait`` then waits until the SuperLink accepts connections.

    fedrouter-connection deploy --address 127.0.0.1:9093 --insecure --wait 60
    fedrouter-connection deploy --address link.example.org:9093 --root-certificates certs/ca.crt
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path


def wait_for(address: str, timeout: float) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout`` seconds."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def write_connection(name: str, address: str, insecure: bool, root_certificates: Path | None) -> Path:
    """Write ``[superlink.<name>]``; return the configuration file's path."""
    from fedrouter_app.compat.flwr_helpers import write_superlink_connection

    certificates = str(root_certificates.expanduser().resolve()) if root_certificates else None
    return write_superlink_connection(name, address, True if insecure else None, certificates)


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(prog="fedrouter-connection", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="connection name, as in `flwr run . <name>`")
    parser.add_argument("--address", required=True, help="the SuperLink's host:port")
    security = parser.add_mutually_exclusive_group(required=True)
    security.add_argument("--insecure", action="store_true", help="plain HTTP (a SuperLink started with --insecure)")
    security.add_argument("--root-certificates", type=Path, help="CA certificate that signed the SuperLink's")
    parser.add_argument("--wait", type=float, default=0.0, help="then wait up to this many seconds for the SuperLink")
    args = parser.parse_args(argv)
    if not args.name.replace("-", "").replace("_", "").isalnum():
        parser.error(f"connection name {args.name!r}: use letters, digits, '-' and '_'")
    host, _, port = args.address.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--address {args.address!r}: expected host:port")
    if args.root_certificates and not args.root_certificates.expanduser().is_file():
        parser.error(f"--root-certificates {args.root_certificates}: no such file")
    try:
        path = write_connection(args.name, args.address, args.insecure, args.root_certificates)
    except Exception as err:  # Flower's ClickException on an unreadable file, OSError
        sys.exit(f"fedrouter-connection: {getattr(err, 'message', None) or err}")
    print(f"SuperLink connection '{args.name}' -> {args.address} in {path}")
    if args.wait > 0 and not wait_for(args.address, args.wait):
        sys.exit(f"fedrouter-connection: the SuperLink at {args.address} did not answer within {args.wait:g} s")


if __name__ == "__main__":
    main()
