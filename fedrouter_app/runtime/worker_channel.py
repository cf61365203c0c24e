"""The local channel between a node's ClientApp processes and its warm worker.

A Unix socket; one request per connection. Nothing received is evaluated or
unpickled: a frame is a fixed header, a JSON header of plain values and
protobuf bytes of Flower's own records (``flwr.common.serde``), and it is
authenticated before any of that is parsed.

Both ends prove that they hold the node's secret (a file only their user may
read) before the client discloses anything but a random nonce::

    client -> worker   b"FRW2" b"C" client_nonce[32]
    worker -> client   b"FRW2" b"N" worker_nonce[32] code[32] proof[32]
                       proof = HMAC-SHA256(secret, "worker" || client_nonce || worker_nonce || code)
    client -> worker   b"FRW2" b"P" HMAC-SHA256(secret, "client" || client_nonce || worker_nonce)
    client -> worker   frame(b"Q", payload)
    worker -> client   frame(b"R", payload)

    frame(kind, payload) = b"FRW2" kind length[8, big-endian] tag[32] payload
    tag = HMAC-SHA256(secret, client_nonce || worker_nonce || sender || kind || length || payload)

A listener without the secret (a process that bound the socket path first)
cannot produce the worker's proof, so the client stops after its nonce and
says so; a peer's user is checked on both ends (``SO_PEERCRED``). Every frame
is bound to both nonces and to its direction, and each end reads one frame per
connection, so a recorded frame is refused on any other connection and cannot
be reflected back. ``code`` is the hash of the worker's app code
(:func:`app_code_hash`), authenticated by the proof, so a client never has its
message handled by other code than its own. A frame's length is checked
against a bound before its payload is read, and only after both ends proved
themselves.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import socket
import stat
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fedrouter_app.method_packages import LAYOUT_PARTS, PACKAGE_DIR, part_dir

MAGIC = b"FRW2"
NONCE_BYTES = 32
TAG_BYTES = 32
CODE_BYTES = 32
HEADER = len(MAGIC) + 1 + 8 + TAG_BYTES
REQUEST, REPLY, NONCE, STOP = b"Q", b"R", b"N", b"S"
HELLO, PROOF = b"C", b"P"
# Who sent a frame: bound into its tag, so a frame cannot be reflected back to its sender.
FROM_CLIENT, FROM_WORKER = b"c", b"w"
# Largest frame either side accepts by default (node config ``worker-max-mb``).
DEFAULT_MAX_BYTES = 1 << 30
SECRET_BYTES = 32
# The packages and config whose content must be the same on both ends of the channel.
CODE_PARTS = (("fedrouter_app", "*.py"), ("clients", "*.py"), ("strategies", "*.py"), ("conf", "*.yaml"))


class ChannelError(RuntimeError):
    """The channel failed: no worker, a bad frame, failed authentication, a frame over the bound."""


class AuthenticationError(ChannelError):
    """A frame failed authentication: the two ends do not share the secret."""


@cache
def app_code_hash(root: Path | None = None) -> bytes:
    """SHA-256 over the app's source and config files (paths within each part, contents), in a fixed order.

    The same code gives the same hash in the repository layout and installed
    (methods and configuration inside ``fedrouter_app``; see
    :mod:`fedrouter_app.method_packages`), so a worker started from a wheel
    serves a ClientApp run from Flower's app bundle of the same code.
    """
    package_dir = (root or app_root()) / "fedrouter_app"
    nested = {part_dir(name, package_dir) for name in LAYOUT_PARTS}
    digest = hashlib.sha256()
    for name, pattern in CODE_PARTS:
        folder = package_dir if name == "fedrouter_app" else part_dir(name, package_dir)
        for path in sorted(folder.rglob(pattern)):
            if "__pycache__" in path.parts or (name == "fedrouter_app" and nested.intersection(path.parents)):
                continue
            digest.update(f"{name}/{path.relative_to(folder).as_posix()}".encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.digest()


def app_root() -> Path:
    """The directory holding ``fedrouter_app`` (the unpacked FAB, the source checkout, or site-packages)."""
    return PACKAGE_DIR.parent


# Secrets.


def create_secret(path: Path) -> None:
    """Write a fresh random secret readable by this user only, unless ``path`` already holds one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_bytes(SECRET_BYTES))


def read_secret(path: Path) -> bytes:
    """The secret in ``path``; refused when it is not this user's, others may read it, or it is too short."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            data = handle.read()
    except OSError as err:
        raise ChannelError(f"worker secret {path}: cannot read it ({err.strerror})") from None
    if info.st_uid != os.getuid():
        raise ChannelError(f"worker secret {path}: owned by another user (uid {info.st_uid}); use your own")
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ChannelError(f"worker secret {path}: readable by others than its owner; chmod 600 it")
    if len(data) < 16:
        raise ChannelError(f"worker secret {path}: holds {len(data)} bytes, at least 16 are needed")
    return data


def private_folder(folder: Path) -> None:
    """Create ``folder`` for this user alone (0700), or refuse one that another user owns or others may enter.

    The socket, its lock, log and secret live there: in a folder another user
    can write to, they could be replaced or linked elsewhere.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise ChannelError(f"worker folder {folder}: not a folder (a link?); give a folder of your own")
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ChannelError(
            f"worker folder {folder}: owned by uid {info.st_uid} with mode {stat.S_IMODE(info.st_mode):o}; the "
            "worker's socket needs a folder only you can enter (mode 700, yours): use another path"
        )


def open_private(path: Path, flags: int) -> int:
    """``os.open`` of a file of ours, never through a symbolic link planted in its place (mode 0600 if created)."""
    return os.open(path, flags | os.O_NOFOLLOW, 0o600)


def check_peer(sock: socket.socket) -> None:
    """Refuse a peer that runs as another user (where the system tells: ``SO_PEERCRED``)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return
    creds = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    if uid != os.getuid():
        raise AuthenticationError(f"the peer runs as uid {uid}, not as this user ({os.getuid()})")


# The handshake.


def _proof(secret: bytes, role: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, role + b"".join(parts), hashlib.sha256).digest()


def client_hello() -> tuple[bytes, bytes]:
    """The client's fresh nonce and the opening bytes that carry it: all it sends before the worker proves itself."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce, MAGIC + HELLO + nonce


def read_client_hello(sock: socket.socket) -> bytes | None:
    """The client's nonce (worker side); None when the client closed without one."""
    opening = recv_exactly(sock, len(MAGIC) + 1 + NONCE_BYTES, allow_empty=True)
    if not opening:
        return None
    if opening[: len(MAGIC) + 1] != MAGIC + HELLO:
        raise ChannelError("the client does not speak the fedrouter worker protocol")
    return opening[len(MAGIC) + 1 :]


def worker_opening(secret: bytes, client_nonce: bytes, code: bytes) -> tuple[bytes, bytes]:
    """The worker's nonce and its answer: nonce, code hash and its proof of the secret."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    proof = _proof(secret, b"worker", client_nonce, nonce, code)
    return nonce, MAGIC + NONCE + nonce + code + proof


def read_worker_opening(sock: socket.socket, secret: bytes, client_nonce: bytes, where: object) -> tuple[bytes, bytes]:
    """The worker's ``(nonce, code hash)``, once its proof shows it holds ``secret``."""
    opening = recv_exactly(sock, len(MAGIC) + 1 + NONCE_BYTES + CODE_BYTES + TAG_BYTES)
    if opening[: len(MAGIC) + 1] != MAGIC + NONCE:
        raise ChannelError("the socket does not speak the fedrouter worker protocol")
    body = opening[len(MAGIC) + 1 :]
    nonce, code, proof = body[:NONCE_BYTES], body[NONCE_BYTES:-TAG_BYTES], body[-TAG_BYTES:]
    if not hmac.compare_digest(proof, _proof(secret, b"worker", client_nonce, nonce, code)):
        raise AuthenticationError(
            f"the process at {where} does not prove it holds this node's worker secret: another process listens "
            "there, or it uses another secret file; nothing was sent to it"
        )
    return nonce, code


def client_proof(secret: bytes, client_nonce: bytes, worker_nonce: bytes) -> bytes:
    """The client's proof of the secret, sent once the worker proved itself."""
    return MAGIC + PROOF + _proof(secret, b"client", client_nonce, worker_nonce)


def check_client_proof(sock: socket.socket, secret: bytes, client_nonce: bytes, worker_nonce: bytes) -> bool:
    """Worker side: True when the client proves it holds the secret; False when it closed first (a probe)."""
    got = recv_exactly(sock, len(MAGIC) + 1 + TAG_BYTES, allow_empty=True)
    if not got:
        return False
    if got[: len(MAGIC) + 1] != MAGIC + PROOF:
        raise ChannelError("the client sent no proof of the worker secret")
    if not hmac.compare_digest(got[len(MAGIC) + 1 :], _proof(secret, b"client", client_nonce, worker_nonce)):
        raise AuthenticationError("the client does not prove it holds this node's worker secret")
    return True


# Frames.


def _tag(secret: bytes, session: bytes, sender: bytes, kind: bytes, payload: bytes) -> bytes:
    mac = hmac.new(secret, session + sender + kind + len(payload).to_bytes(8, "big"), hashlib.sha256)
    mac.update(payload)
    return mac.digest()


def send_frame(sock: socket.socket, secret: bytes, session: bytes, sender: bytes, kind: bytes, payload: bytes) -> None:
    """Send one authenticated frame of ``sender`` (:data:`FROM_CLIENT` or :data:`FROM_WORKER`) in ``session``."""
    header = MAGIC + kind + len(payload).to_bytes(8, "big") + _tag(secret, session, sender, kind, payload)
    sock.sendall(header)
    sock.sendall(payload)


def recv_frame(
    sock: socket.socket, secret: bytes, session: bytes, sender: bytes, kinds: tuple[bytes, ...], max_bytes: int
) -> tuple[bytes, bytes]:
    """Receive one frame of ``sender`` and one of ``kinds``: ``(kind, payload)``, checked and authenticated."""
    header = recv_exactly(sock, HEADER)
    if header[: len(MAGIC)] != MAGIC:
        raise ChannelError("not a fedrouter worker frame (bad magic)")
    kind = header[len(MAGIC) : len(MAGIC) + 1]
    if kind not in kinds:
        raise ChannelError(f"unexpected frame kind {kind!r}")
    length = int.from_bytes(header[len(MAGIC) + 1 : len(MAGIC) + 9], "big")
    if length > max_bytes:
        raise ChannelError(f"frame of {length} bytes exceeds the bound of {max_bytes} (worker-max-mb)")
    payload = recv_exactly(sock, length)
    if not hmac.compare_digest(header[len(MAGIC) + 9 :], _tag(secret, session, sender, kind, payload)):
        raise AuthenticationError("frame failed authentication: not of this connection, or not of this secret")
    return kind, payload


def recv_exactly(sock: socket.socket, n: int, allow_empty: bool = False) -> bytes:
    """``n`` bytes, or :class:`ChannelError` when the peer closes first (``b""`` if it sent none, where allowed)."""
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            if allow_empty and left == n:
                return b""
            raise ChannelError("the connection closed mid-frame (the other end died or refused the frame)")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# Payloads: a JSON header of plain values, then the byte blocks it names.


def pack(header: dict[str, Any], blocks: dict[str, bytes]) -> bytes:
    """``header`` (plain JSON values) and named byte ``blocks`` as one payload."""
    header = {**header, "blocks": [[name, len(data)] for name, data in blocks.items()]}
    text = json.dumps(header).encode()
    return len(text).to_bytes(4, "big") + text + b"".join(blocks.values())


def unpack(payload: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Inverse of :func:`pack`, with every length checked."""
    if len(payload) < 4:
        raise ChannelError("payload too short")
    size = int.from_bytes(payload[:4], "big")
    try:
        header = json.loads(payload[4 : 4 + size])
    except (ValueError, UnicodeDecodeError) as err:
        raise ChannelError(f"payload header is not JSON ({err})") from None
    if not isinstance(header, dict) or not isinstance(header.get("blocks"), list):
        raise ChannelError("payload header is malformed")
    blocks, offset = {}, 4 + size
    for entry in header.pop("blocks"):
        well_formed = isinstance(entry, list) and len(entry) == 2
        if not (well_formed and isinstance(entry[0], str) and isinstance(entry[1], int)):
            raise ChannelError("payload block list is malformed")
        name, length = entry
        if length < 0 or offset + length > len(payload):
            raise ChannelError(f"payload block {name!r} overruns the payload")
        blocks[name] = payload[offset : offset + length]
        offset += length
    if offset != len(payload):
        raise ChannelError("payload has trailing bytes")
    return header, blocks


@dataclass(frozen=True)
class WorkerAddress:
    """Where a node's worker listens and how to authenticate to it (from the node config).

    Attributes
    ----------
    socket : Path
        The Unix socket (node config ``worker``).
    secret : Path
        The shared secret (``worker-secret``; default: the socket path + ``.secret``).
    max_bytes : int
        Bound on a frame either way (``worker-max-mb``).
    autostart : bool
        Start a worker when none answers (``worker-autostart``, default true).
    """

    socket: Path
    secret: Path
    max_bytes: int = DEFAULT_MAX_BYTES
    autostart: bool = True

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> WorkerAddress | None:
        """The node's worker, or None when its config names none."""
        path = str(node_config.get("worker", "") or "").strip()
        if not path:
            return None
        sock = Path(path).expanduser()
        if not sock.is_absolute():
            raise ValueError(f"node config worker={path!r}: give the socket's absolute path")
        secret = Path(str(node_config.get("worker-secret", "") or f"{sock}.secret")).expanduser()
        max_mb = node_config.get("worker-max-mb", DEFAULT_MAX_BYTES >> 20)
        if isinstance(max_mb, bool) or not isinstance(max_mb, int | float) or max_mb <= 0:
            raise ValueError(f"node config worker-max-mb must be a positive number, got {max_mb!r}")
        autostart = node_config.get("worker-autostart", True)
        if not isinstance(autostart, bool):
            raise ValueError(f"node config worker-autostart must be true or false, got {autostart!r}")
        return cls(sock, secret, int(max_mb * (1 << 20)), autostart)


def lock_path(sock: Path) -> Path:
    """The file a live worker holds an exclusive lock on for as long as it serves ``sock``."""
    return sock.with_name(sock.name + ".lock")


def try_lock(sock: Path) -> int | None:
    """Take the exclusive lock of ``sock``'s worker without waiting: its descriptor, or None if a process holds it."""
    path = lock_path(sock)
    private_folder(path.parent)
    fd = open_private(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
