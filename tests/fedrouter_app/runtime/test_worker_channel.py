"""The worker channel's frames: authentication, bounds, payload layout, secrets, node-config parsing."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from fedrouter_app.runtime.worker_channel import (
    DEFAULT_MAX_BYTES,
    FROM_CLIENT,
    FROM_WORKER,
    REPLY,
    REQUEST,
    AuthenticationError,
    ChannelError,
    WorkerAddress,
    app_code_hash,
    check_client_proof,
    client_hello,
    client_proof,
    create_secret,
    pack,
    private_folder,
    read_client_hello,
    read_secret,
    read_worker_opening,
    recv_frame,
    send_frame,
    unpack,
    worker_opening,
)

SECRET = b"s" * 32
SESSION = b"c" * 32 + b"w" * 32


def handshake(client_secret: bytes = SECRET, worker_secret: bytes = SECRET) -> tuple[bytes, bytes]:
    """Both ends' handshake over a socket pair; the session each computed (the worker's is b"" if it refused)."""
    a, b = socket.socketpair()
    result = {}

    def worker() -> None:
        nonce = read_client_hello(a)
        w_nonce, opening = worker_opening(worker_secret, nonce, app_code_hash())
        a.sendall(opening)
        try:
            result["worker"] = nonce + w_nonce if check_client_proof(a, worker_secret, nonce, w_nonce) else b""
        except ChannelError:
            result["worker"] = b""

    with a, b:
        thread = threading.Thread(target=worker)
        thread.start()
        nonce, hello = client_hello()
        b.sendall(hello)
        try:
            w_nonce, code = read_worker_opening(b, client_secret, nonce, "test")
            assert code == app_code_hash()
            b.sendall(client_proof(client_secret, nonce, w_nonce))
            client = nonce + w_nonce
        finally:
            b.close()
            thread.join()
    return client, result["worker"]


def exchange(payload: bytes, *, secret: bytes = SECRET, their_secret: bytes = SECRET, max_bytes: int = 1 << 20):
    """Send one request frame over a socket pair; return what the receiving end makes of it."""
    a, b = socket.socketpair()
    with a, b:
        sender = threading.Thread(target=send_frame, args=(b, their_secret, SESSION, FROM_CLIENT, REQUEST, payload))
        sender.start()
        try:
            return recv_frame(a, secret, SESSION, FROM_CLIENT, (REQUEST,), max_bytes)
        finally:
            sender.join()


def test_both_ends_prove_the_secret_and_agree_on_the_session():
    client, worker = handshake()
    assert client == worker and len(client) == 64


def test_a_worker_without_the_secret_is_refused_before_the_client_sends_anything_more():
    with pytest.raises(AuthenticationError, match="does not prove it holds this node's worker secret"):
        handshake(worker_secret=b"t" * 32)


def test_a_client_without_the_secret_is_refused_by_the_worker():
    with pytest.raises(AuthenticationError):  # the client sees the worker's proof fail against its own secret
        handshake(client_secret=b"t" * 32)
    # A client that skips that check and answers with a proof of another secret gets nothing from the worker.
    a, b = socket.socketpair()
    with a, b:
        nonce, hello = client_hello()
        b.sendall(hello)
        w_nonce, _opening = worker_opening(SECRET, read_client_hello(a), app_code_hash())
        b.sendall(client_proof(b"t" * 32, nonce, w_nonce))
        with pytest.raises(AuthenticationError, match="client does not prove"):
            check_client_proof(a, SECRET, nonce, w_nonce)


def test_a_frame_round_trips_and_carries_named_blocks():
    payload = pack({"overrides": ["a=1"], "code": "x"}, {"message": b"\x00\x01", "context": b""})
    kind, received = exchange(payload)
    assert kind == REQUEST and received == payload
    header, blocks = unpack(received)
    assert header == {"overrides": ["a=1"], "code": "x"} and blocks == {"message": b"\x00\x01", "context": b""}


def test_a_frame_signed_with_another_secret_is_refused():
    with pytest.raises(AuthenticationError, match="authentication"):
        exchange(b"hello", their_secret=b"t" * 32)


def test_a_frame_over_the_bound_is_refused_before_its_payload_is_read():
    with pytest.raises(ChannelError, match="exceeds the bound"):
        exchange(b"x" * 2048, max_bytes=1024)


def test_a_replayed_frame_is_refused_on_another_connection_and_in_the_other_direction():
    a, b = socket.socketpair()
    with a, b:
        send_frame(b, SECRET, SESSION, FROM_WORKER, REPLY, b"payload")
        with pytest.raises(AuthenticationError):  # another connection: other nonces
            recv_frame(a, SECRET, b"d" * 32 + b"w" * 32, FROM_WORKER, (REPLY,), 1 << 20)
    a, b = socket.socketpair()
    with a, b:
        send_frame(b, SECRET, SESSION, FROM_CLIENT, REPLY, b"payload")
        with pytest.raises(AuthenticationError):  # the client's own frame sent back to it
            recv_frame(a, SECRET, SESSION, FROM_WORKER, (REPLY,), 1 << 20)


def test_frames_of_an_unexpected_kind_or_protocol_are_refused():
    a, b = socket.socketpair()
    with a, b:
        send_frame(b, SECRET, SESSION, FROM_WORKER, REPLY, b"payload")
        with pytest.raises(ChannelError, match="unexpected frame kind"):
            recv_frame(a, SECRET, SESSION, FROM_WORKER, (REQUEST,), 1 << 20)
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"GET / HTTP/1.1\r\n" + b"\0" * 64)
        with pytest.raises(ChannelError, match="bad magic"):
            recv_frame(a, SECRET, SESSION, FROM_CLIENT, (REQUEST,), 1 << 20)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00\x00\x00\x05{bad", b"\x00\x00\x00\x02[]", pack({}, {"m": b"abc"})[:-1], pack({}, {}) + b"extra"],
)
def test_malformed_payloads_raise_channel_errors(payload):
    with pytest.raises(ChannelError):
        unpack(payload)


def test_a_truncated_connection_is_a_channel_error():
    a, b = socket.socketpair()
    with a:
        b.sendall(b"FRW2Q")
        b.close()
        with pytest.raises(ChannelError, match="closed mid-frame"):
            recv_frame(a, SECRET, SESSION, FROM_CLIENT, (REQUEST,), 1 << 20)


def test_secrets_are_private_and_kept(tmp_path):
    path = tmp_path / "deep" / "node.secret"
    create_secret(path)
    first = read_secret(path)
    assert len(first) == 32 and oct(path.stat().st_mode & 0o777) == "0o600"
    create_secret(path)  # an existing secret is kept: a running worker and its ClientApps share it
    assert read_secret(path) == first
    os.chmod(path, 0o644)
    with pytest.raises(ChannelError, match="readable by others"):
        read_secret(path)
    with pytest.raises(ChannelError, match="cannot read"):
        read_secret(tmp_path / "missing")
    os.chmod(path, 0o600)
    (tmp_path / "link.secret").symlink_to(path)
    with pytest.raises(ChannelError, match="cannot read"):  # a link planted in its place is not followed
        read_secret(tmp_path / "link.secret")


def test_the_socket_folder_is_private_and_an_open_one_is_refused(tmp_path):
    folder = tmp_path / "a" / "workers"
    private_folder(folder)
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    private_folder(folder)  # ours and private: kept
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(ChannelError, match="a folder only you can enter"):
        private_folder(shared)


def test_node_config_names_the_worker():
    assert WorkerAddress.from_node_config({"partition-id": 0}) is None
    address = WorkerAddress.from_node_config({"worker": "/run/n0.sock", "worker-max-mb": 8})
    assert address is not None
    assert str(address.secret) == "/run/n0.sock.secret" and address.max_bytes == 8 << 20 and address.autostart
    explicit = WorkerAddress.from_node_config(
        {"worker": "/run/n0.sock", "worker-secret": "/etc/s", "worker-autostart": False}
    )
    assert explicit is not None and str(explicit.secret) == "/etc/s" and not explicit.autostart
    assert WorkerAddress.from_node_config({"worker": "/a"}).max_bytes == DEFAULT_MAX_BYTES
    for bad in (
        {"worker": "relative.sock"},
        {"worker": "/a", "worker-max-mb": 0},
        {"worker": "/a", "worker-autostart": 1},
    ):
        with pytest.raises(ValueError, match="worker"):
            WorkerAddress.from_node_config(bad)


def test_the_code_hash_follows_the_apps_files(tmp_path):
    (tmp_path / "fedrouter_app").mkdir()
    (tmp_path / "conf").mkdir()
    (tmp_path / "fedrouter_app" / "a.py").write_text("x = 1\n")
    (tmp_path / "conf" / "c.yaml").write_text("k: 1\n")
    before = app_code_hash.__wrapped__(tmp_path)
    (tmp_path / "conf" / "c.yaml").write_text("k: 2\n")
    assert app_code_hash.__wrapped__(tmp_path) != before
