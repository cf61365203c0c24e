"""A node's warm worker: one long-lived process that does the node's client work for every message.

Flower's deployment runtime starts a fresh ClientApp process for every
message. Started beside a SuperNode, the worker imports torch, transformers and
peft once, keeps the base model loaded (on the GPU where there is one) and
does the work of each message the node's ClientApp forwards to it over a
Unix socket (:mod:`fedrouter_app.runtime.worker_channel`), with the same handler a
ClientApp without a worker runs (:mod:`fedrouter_app.client.client_handler`).

It keeps no client or run state between messages: each request brings the
node's ``context.state`` and the reply takes it back, so Flower owns it and a
restarted worker loses nothing. Messages are handled one at a time (the model
holds one set of adapter weights at a time); caches (composed configs, client
data, the model) are keyed by the run's configuration, so runs never see each
other's state.

    fedrouter-worker --socket /run/fedrouter/node0.sock --cpus 2
    python -m fedrouter_app.runtime.worker --socket ... [--secret-file ...] [--max-mb 1024] [--idle-exit 0]
        [--owner-pid PID]

With ``--owner-pid`` the worker exits as soon as that process does: a worker
the ClientApp starts watches the process that launches the node's ClientApps
(see :func:`fedrouter_app.runtime.worker_client.node_owner_pid`), so it does not
outlive its SuperNode.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from fedrouter_app.client.client_logs import client_label, label_client_logs
from fedrouter_app.compat.flwr_helpers import (
    ProtoContext,
    ProtoMessage,
    context_from_proto,
    message_from_proto,
    recorddict_to_proto,
)
from fedrouter_app.federation.client_errors import public_reason
from fedrouter_app.logs import get_logger
from fedrouter_app.runtime.node_threads import apply_cpus, node_cpus
from fedrouter_app.runtime.worker_channel import (
    DEFAULT_MAX_BYTES,
    FROM_CLIENT,
    FROM_WORKER,
    REPLY,
    REQUEST,
    STOP,
    ChannelError,
    app_code_hash,
    check_client_proof,
    check_peer,
    create_secret,
    pack,
    private_folder,
    read_client_hello,
    read_secret,
    recv_frame,
    send_frame,
    try_lock,
    unpack,
    worker_opening,
)

# Named for the module even when run as ``python -m``.
log = get_logger("fedrouter_app.runtime.worker")

# A connection that has sent nothing for this long is dropped (the request itself may be large).
REQUEST_TIMEOUT = 300.0
# How often the owner is looked at where the kernel cannot tell us when it exits (no pidfd).
OWNER_POLL_INTERVAL = 0.5


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has exited; a zombie (exited, not yet reaped by its parent) has.

    Parameters
    ----------
    pid : int
        The process to look at.

    Returns
    -------
    bool
        True once the process no longer runs.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it lives, under another user
    # A killed SuperNode stays a zombie until whoever started it waits for it: it is gone all the same.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return Path("/proc/self").is_dir()  # with /proc mounted, the process was reaped just now
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def watch_owner(
    pid: int, on_exit: Callable[[], None], *, interval: float = OWNER_POLL_INTERVAL, use_pidfd: bool = True
) -> threading.Thread:
    """Call ``on_exit`` (once, from a daemon thread) when process ``pid`` exits, or at once if it has.

    Where the kernel offers a pidfd (Linux 5.3+, and not refused by a
    container's seccomp profile) the thread sleeps until the kernel reports the
    exit; elsewhere it looks every ``interval`` seconds.

    Parameters
    ----------
    pid : int
        The process to watch.
    on_exit : callable
        Called without arguments when it has exited.
    interval : float
        Seconds between looks without a pidfd.
    use_pidfd : bool
        Try a pidfd first (off: always poll).

    Returns
    -------
    threading.Thread
        The started watcher thread.
    """

    def watch() -> None:
        fd = None
        if use_pidfd and hasattr(os, "pidfd_open"):
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                on_exit()
                return
            except OSError:
                fd = None  # no pidfd here (old kernel, seccomp): poll instead
        if fd is not None:
            try:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                poller.poll()  # readable once the process has exited
            finally:
                os.close(fd)
        else:
            while not process_gone(pid):
                time.sleep(interval)
        on_exit()

    thread = threading.Thread(target=watch, name=f"owner-{pid}", daemon=True)
    thread.start()
    return thread


class Worker:
    """Serves one node's ClientApp requests on a Unix socket.

    Parameters
    ----------
    socket_path, secret_path : Path
        Where to listen, and the shared secret (created, 0600, when missing).
    cpus : int, optional
        torch threads; None: the ``num-cpus`` of the node config each request brings, else torch's choice.
    max_bytes : int
        Largest request accepted.
    idle_exit : float
        Exit after this many seconds without a request (0: never).
    managed : bool
        Started by a ClientApp: it may ask this worker to make way for one running newer app code.
    owner_pid : int, optional
        Stop serving once this process exits (the node's; None: serve on without it).
    """

    def __init__(
        self,
        socket_path: Path,
        secret_path: Path,
        *,
        cpus: int | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        idle_exit: float = 0.0,
        managed: bool = False,
        owner_pid: int | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.secret_path = secret_path
        self.cpus = cpus
        self.max_bytes = max_bytes
        self.idle_exit = idle_exit
        self.managed = managed
        self.owner_pid = owner_pid
        self.code = app_code_hash()
        self.stopping = threading.Event()
        self.handling = threading.Lock()
        self.last_request = time.monotonic()
        self.served = 0
        self._lock_fd: int | None = None
        self._secret = b""

    def acquire(self) -> None:
        """Take the socket's lock for this process's lifetime; refuse when another worker holds it."""
        fd = try_lock(self.socket_path)
        if fd is None:
            raise SystemExit(f"another worker already serves {self.socket_path}")
        self._lock_fd = fd
        create_secret(self.secret_path)
        self._secret = read_secret(self.secret_path)

    def serve(self) -> None:
        """Listen until stopped (signal, idle timeout, a managed stop, or the owner's exit), then remove the socket."""
        if self.owner_pid is not None:
            watch_owner(self.owner_pid, self._owner_gone)
        apply_cpus(self.cpus)
        from fedrouter_app.client import client_handler  # noqa: F401  (the imports every message would pay, paid once)

        private_folder(self.socket_path.parent)
        self.socket_path.unlink(missing_ok=True)  # ours to replace: we hold the lock
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            server.bind(str(self.socket_path))
        finally:
            os.umask(old)
        server.listen(64)
        server.settimeout(0.5)
        log.info(
            "worker pid %d serving %s (app code %s, torch threads %s)",
            os.getpid(), self.socket_path, self.code.hex()[:12], self.cpus or "default",
        )  # fmt: skip
        try:
            while not self.stopping.is_set():
                if self.idle_exit and time.monotonic() - self.last_request > self.idle_exit:
                    log.info("no request for %g s: exiting", self.idle_exit)
                    break
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                threading.Thread(target=self._connection, args=(conn,), daemon=True).start()
        finally:
            server.close()
            self.socket_path.unlink(missing_ok=True)
            log.info("worker stopped after %d messages", self.served)

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            try:
                check_peer(conn)
                conn.settimeout(REQUEST_TIMEOUT)
                client_nonce = read_client_hello(conn)
                if client_nonce is None:
                    return
                nonce, opening = worker_opening(self._secret, client_nonce, self.code)
                conn.sendall(opening)
                if not check_client_proof(conn, self._secret, client_nonce, nonce):
                    return  # a ClientApp checking that the worker answers, and proves itself
                session = client_nonce + nonce
                kind, payload = recv_frame(conn, self._secret, session, FROM_CLIENT, (REQUEST, STOP), self.max_bytes)
                if kind == STOP:
                    stopping = pack({"stopping": self._stop_request()}, {})
                    send_frame(conn, self._secret, session, FROM_WORKER, REPLY, stopping)
                    return
                conn.settimeout(None)
                reply = self.handle(payload)
                send_frame(conn, self._secret, session, FROM_WORKER, REPLY, reply)
            except (ChannelError, OSError) as err:
                log.warning("dropped a connection: %s", err)

    def _owner_gone(self) -> None:
        # The node whose ClientApps would send work is gone; its next start must find the socket free.
        log.info("the process this worker serves (pid %d) has exited: exiting", self.owner_pid)
        self.stopping.set()

    def _stop_request(self) -> bool:
        if self.managed:
            log.info("asked to make way for another app version: exiting")
            self.stopping.set()
        else:
            log.warning("refused a request to stop: this worker was started by its user (stop it yourself)")
        return self.managed

    def handle(self, payload: bytes) -> bytes:
        """One request: decode, run the handler, encode the reply (an error reply if the handler raised)."""
        from fedrouter_app.client.client_handler import handle_message

        header, blocks = unpack(payload)
        if header.get("code") != self.code.hex():
            return pack({"ok": False, "error_type": "RuntimeError", "error": "worker runs other app code"}, {})
        overrides = header.get("overrides", [])
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ChannelError("request overrides must be a list of strings")
        try:
            msg = message_from_proto(ProtoMessage.FromString(blocks["message"]))
            context = context_from_proto(ProtoContext.FromString(blocks["context"]))
        except Exception as err:  # protobuf's DecodeError, or a missing block
            raise ChannelError(f"request does not decode ({type(err).__name__}: {err})") from None
        queued = time.perf_counter()
        with self.handling:
            start = time.perf_counter()
            self.last_request = time.monotonic()
            apply_cpus(self.cpus or node_cpus(context.node_config))
            client = context.node_config.get("partition-id", "?")
            with client_label(context.run_id, client):
                log.info("%s: working", msg.metadata.message_type)
                try:
                    reply = handle_message(msg, context, overrides)
                except Exception as err:
                    log.warning("%s failed: %s: %s", msg.metadata.message_type, type(err).__name__, err)
                    # The error's message may name this node's files: the server gets the public reason only.
                    error = {"error_type": type(err).__name__, "error": str(err), "public": public_reason(err)}
                    return pack({"ok": False, **error}, {})
                work = time.perf_counter() - start
                log.info("%s handled in %.2f s", msg.metadata.message_type, work)
            self.served += 1
            self.last_request = time.monotonic()
        timing = {"work": work, "wait": start - queued}
        return pack(
            {"ok": True, "timing": timing},
            {
                "content": recorddict_to_proto(reply.content).SerializeToString(),
                "state": recorddict_to_proto(context.state).SerializeToString(),
            },
        )


def main(argv: list[str] | None = None) -> None:
    """Command line: start a worker and serve until stopped."""
    parser = argparse.ArgumentParser(prog="fedrouter-worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket to serve (the node's worker=...)")
    parser.add_argument("--secret-file", type=Path, default=None, help="shared secret (default: <socket>.secret)")
    parser.add_argument("--cpus", type=int, default=None, help="torch threads (default: the node's num-cpus)")
    parser.add_argument("--max-mb", type=float, default=DEFAULT_MAX_BYTES >> 20, help="largest request, MiB")
    parser.add_argument("--idle-exit", type=float, default=0.0, help="exit after this many idle seconds (0: never)")
    parser.add_argument(
        "--owner-pid", type=int, default=None, help="exit when this process exits (e.g. the SuperNode's pid)"
    )
    parser.add_argument("--managed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.socket.is_absolute():
        parser.error("--socket must be an absolute path")
    if args.cpus is not None and args.cpus < 1:
        parser.error("--cpus must be >= 1")
    if args.max_mb <= 0:
        parser.error("--max-mb must be positive")
    if args.owner_pid is not None and args.owner_pid <= 1:
        parser.error("--owner-pid must name a process other than init")
    label_client_logs()
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.INFO)
    # Flower's console handler prints every line; a library's root-logger set-up must not print it twice.
    flwr_logger.propagate = False
    worker = Worker(
        args.socket,
        args.secret_file or Path(f"{args.socket}.secret"),
        cpus=args.cpus,
        max_bytes=int(args.max_mb * (1 << 20)),
        idle_exit=args.idle_exit,
        managed=args.managed,
        owner_pid=args.owner_pid,
    )
    worker.acquire()

    def stop(signum: int, frame: FrameType | None) -> None:
        worker.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.serve()
    sys.exit(0)


if __name__ == "__main__":
    main()
