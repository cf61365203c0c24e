"""The ClientApp's side of the channel to its node's warm worker: connect, start one if needed, forward.

A request carries the message (content and metadata) and the whole Flower
``Context`` (node config, run config, ``context.state``); the reply carries
the reply's content and the state after the message. Flower stays the owner
of the node's state: the worker keeps none of it, so a worker that dies loses
nothing, and the message is sent again to its replacement.
"""

from __future__ import annotations

import builtins
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import Context, Message, RecordDict

from fedrouter_app.compat.flwr_helpers import ProtoRecordDict, context_to_proto, message_to_proto, recorddict_from_proto
from fedrouter_app.federation.client_errors import PUBLIC_REASON
from fedrouter_app.logs import get_logger
from fedrouter_app.runtime.worker_channel import (
    FROM_CLIENT,
    FROM_WORKER,
    REPLY,
    REQUEST,
    STOP,
    AuthenticationError,
    ChannelError,
    WorkerAddress,
    app_code_hash,
    app_root,
    check_peer,
    client_hello,
    client_proof,
    open_private,
    pack,
    private_folder,
    read_secret,
    read_worker_opening,
    recv_frame,
    send_frame,
    try_lock,
    unpack,
)

log = get_logger(__name__)

# How long a ClientApp waits for a worker that is starting (imports, first model load happen later).
START_TIMEOUT = 180.0
# An autostarted worker exits after this long without a message (a user-started one runs until stopped).
AUTOSTART_IDLE_EXIT = 3600
CONNECT_TIMEOUT = 10.0


class WorkerTaskError(RuntimeError):
    """The worker ran the message and its handler raised; the message says what it raised."""


class CodeMismatchError(ChannelError):
    """The worker runs other app code than this ClientApp."""


@dataclass
class Forwarded:
    """What the worker answered, and what it cost.

    Attributes
    ----------
    content : RecordDict
        The reply's content.
    state : RecordDict
        ``context.state`` after the message.
    timing : dict
        ``work`` (the handler, in the worker), ``wait`` (queued behind other
        messages), ``total`` (this side's round trip), ``starts`` (workers this
        call started).
    """

    content: RecordDict
    state: RecordDict
    timing: dict[str, float] = field(default_factory=dict)


def forward(
    address: WorkerAddress, msg: Message, context: Context, overrides: Sequence[str] = (), cpus: int | None = None
) -> Forwarded:
    """Have the node's worker handle ``msg``; start (or restart) it when none answers, and retry once."""
    start = time.perf_counter()
    payload = pack(
        {"overrides": list(overrides), "code": app_code_hash().hex()},
        {
            "message": message_to_proto(msg).SerializeToString(),
            "context": context_to_proto(context).SerializeToString(),
        },
    )
    starts = 0
    for attempt in (1, 2):
        try:
            sock, secret, session = connect(address)
        except AuthenticationError as err:
            # Whoever listens there cannot prove it holds the secret: it learnt a random nonce, nothing else.
            raise ChannelError(f"worker {address.socket}: {err}") from None
        except CodeMismatchError:
            # A worker this app started for an earlier version makes way; a user's worker is left alone.
            if attempt == 2 or not stop_worker(address):
                raise
            starts += ensure_worker(address, cpus)
            continue
        except (ChannelError, OSError) as err:
            if attempt == 2:
                raise ChannelError(f"worker {address.socket}: {err}") from None
            starts += ensure_worker(address, cpus)
            continue
        try:
            with sock:
                send_frame(sock, secret, session, FROM_CLIENT, REQUEST, payload)
                _, reply = recv_frame(sock, secret, session, FROM_WORKER, (REPLY,), address.max_bytes)
        except (ChannelError, OSError) as err:
            # The worker died (or was replaced) mid-message: the state it held is ours, so send it again.
            if attempt == 2 or isinstance(err, AuthenticationError):
                raise ChannelError(f"worker {address.socket}: {err}") from None
            log.warning("worker %s failed mid-message (%s); starting another and sending again", address.socket, err)
            starts += ensure_worker(address, cpus)
            continue
        result = read_reply(reply)
        result.timing.update(total=time.perf_counter() - start, starts=float(starts))
        return result
    raise AssertionError("unreachable")


def read_reply(payload: bytes) -> Forwarded:
    """The reply's content and state, or the worker's error raised here."""
    header, blocks = unpack(payload)
    if not header.get("ok"):
        error = _error_of(str(header.get("error_type", "")), str(header.get("error", "the worker gave no reason")))
        if isinstance(header.get("public"), str):
            # The reason the worker worked out from the error's real class (its bases are not sent).
            setattr(error, PUBLIC_REASON, header["public"])
        raise error
    try:
        content = recorddict_from_proto(ProtoRecordDict.FromString(blocks["content"]))
        state = recorddict_from_proto(ProtoRecordDict.FromString(blocks["state"]))
    except Exception as err:  # protobuf's DecodeError, or a missing block
        raise ChannelError(f"worker reply does not decode ({type(err).__name__}: {err})") from None
    timing = {k: float(v) for k, v in (header.get("timing") or {}).items() if isinstance(v, int | float)}
    return Forwarded(content, state, timing)


def _error_of(type_name: str, message: str) -> Exception:
    """The worker's exception as one raised here, under the same class name.

    Built-in types are raised as they are; others as a :class:`WorkerTaskError`
    subclass of that name, so the reason Flower sends the server reads the same
    as when the ClientApp raised it itself.
    """
    if not type_name.isidentifier():
        return WorkerTaskError(message)
    cls = getattr(builtins, type_name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(message)
    if type_name not in _error_types:
        _error_types[type_name] = type(type_name, (WorkerTaskError,), {})
    return _error_types[type_name](message)


_error_types: dict[str, type[WorkerTaskError]] = {}


def connect(address: WorkerAddress, check_code: bool = True) -> tuple[socket.socket, bytes, bytes]:
    """A connection to the worker once both ends proved they hold the secret: ``(socket, secret, session)``.

    Before the worker proves itself the client sends nothing but a random
    nonce; a worker running other app code is refused after that (unless
    ``check_code`` is off: to ask that worker to stop).
    """
    secret = read_secret(address.secret)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(str(address.socket))
        check_peer(sock)
        nonce, hello = client_hello()
        sock.sendall(hello)
        worker_nonce, code = read_worker_opening(sock, secret, nonce, address.socket)
        if check_code and code != app_code_hash():
            theirs, mine = code.hex()[:12], app_code_hash().hex()[:12]
            raise CodeMismatchError(f"worker {address.socket} runs other app code ({theirs}) than this app ({mine})")
        sock.sendall(client_proof(secret, nonce, worker_nonce))
        sock.settimeout(None)  # a message may train for long; a dead worker closes the socket
    except BaseException:
        sock.close()
        raise
    return sock, secret, nonce + worker_nonce


def worker_alive(address: WorkerAddress) -> bool:
    """Whether some process holds the worker's lock (it lives, perhaps still starting)."""
    fd = try_lock(address.socket)
    if fd is None:
        return True
    os.close(fd)  # releases the lock we took
    return False


def ensure_worker(address: WorkerAddress, cpus: int | None, timeout: float = START_TIMEOUT) -> int:
    """Wait for the node's worker to answer, starting one when none lives; return how many were started.

    A worker that lives (holds its lock) but does not answer yet is starting:
    it is waited for. One that has just died may still hold its lock for a
    moment; once the lock is free, a new one is started.
    """
    proc: subprocess.Popen | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            sock, _, _ = connect(address)
            sock.close()
            return int(proc is not None)
        except (CodeMismatchError, AuthenticationError):
            raise
        except (ChannelError, OSError):
            pass
        if (proc is None or proc.poll() is not None) and not worker_alive(address):
            if proc is not None:
                raise ChannelError(f"the worker for {address.socket} exited while starting; see {worker_log(address)}")
            if not address.autostart:
                raise ChannelError(
                    f"no worker serves {address.socket} (worker-autostart=false): start one with "
                    f"fedrouter-worker --socket {address.socket}"
                )
            proc = start_worker(address, cpus)
        time.sleep(0.1)
    raise ChannelError(f"the worker for {address.socket} gave no answer in {timeout:g} s; see {worker_log(address)}")


def worker_log(address: WorkerAddress) -> Path:
    """Where an autostarted worker writes its log."""
    return address.socket.with_name(address.socket.name + ".log")


def node_owner_pid(argv: Sequence[str] | None = None) -> int | None:
    """The long-lived process whose exit means this node is gone; None where there is none to name.

    Flower runs each message's ClientApp in a short-lived ``flwr-clientapp``
    process, started by the node's SuperExec with ``--parent-pid <its pid>``
    and ending when that SuperExec does. With the SuperNode's default
    ``--isolation subprocess`` the SuperNode starts that SuperExec itself, which
    exits within a fraction of a second of the SuperNode; with ``--isolation
    process`` the SuperExec is the node's executor, started beside the
    SuperNode. Either way that SuperExec is the owner. Where the ClientApp runs
    in a long-lived process (a simulation, an in-process run), that process is.

    Parameters
    ----------
    argv : sequence of str, optional
        This process's command line (default: ``sys.argv``).

    Returns
    -------
    int or None
        The owner's pid, or None when this process was left to init (its launcher is already gone).
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv or Path(argv[0]).stem.replace("_", "-") != "flwr-clientapp":
        return os.getpid()
    # The pid Flower itself watches, as it was at launch: getppid() names init (or a subreaper) once the launcher died.
    owner = None
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--parent-pid" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--parent-pid="):
            value = arg.partition("=")[2]
        else:
            continue
        if value.isdigit():
            owner = int(value)
    if owner is None:
        owner = os.getppid()
    return owner if owner > 1 else None


def start_worker(address: WorkerAddress, cpus: int | None) -> subprocess.Popen:
    """Start a worker for ``address`` from this app's own code, detached from this short-lived process.

    The worker exits after :data:`AUTOSTART_IDLE_EXIT` seconds without a
    message, and as soon as the node's owner process exits
    (:func:`node_owner_pid`), so it does not outlive its SuperNode.
    """
    root = app_root()
    args = [sys.executable, "-m", "fedrouter_app.runtime.worker", "--socket", str(address.socket)]
    args += ["--secret-file", str(address.secret), "--max-mb", str(address.max_bytes >> 20)]
    args += ["--idle-exit", str(AUTOSTART_IDLE_EXIT), "--managed"]
    owner = node_owner_pid()
    if owner is not None:
        args += ["--owner-pid", str(owner)]
    if cpus is not None:
        args += ["--cpus", str(cpus)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    private_folder(address.socket.parent)
    with os.fdopen(open_private(worker_log(address), os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab") as out:
        proc = subprocess.Popen(
            args, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    log.info(
        "started worker pid %d for %s (log %s, exits with pid %s)", proc.pid, address.socket, worker_log(address), owner
    )
    return proc


def stop_worker(address: WorkerAddress, timeout: float = 30.0) -> bool:
    """Ask a worker this app started (``--managed``) to exit; True once it has. A user's worker says no."""
    try:
        sock, secret, session = connect(address, check_code=False)
    except (ChannelError, OSError):
        return not worker_alive(address)
    try:
        send_frame(sock, secret, session, FROM_CLIENT, STOP, b"")
        header, _ = unpack(recv_frame(sock, secret, session, FROM_WORKER, (REPLY,), address.max_bytes)[1])
    except (ChannelError, OSError):
        return not worker_alive(address)
    finally:
        sock.close()
    if not header.get("stopping"):
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker_alive(address):
            return True
        time.sleep(0.1)
    return False
