"""The worker channel's frames: authentication, bounds, payload layout, secrets, node-config parsing."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from fedrouter_app.worker_channel import (
    DEFAULT_MAX_BYTES,
    REPLY,
    REQUEST,
    AuthenticationError,
    ChannelError,
    WorkerAddress,
    app_code_hash,
    create_secret,
    nonce_frame,
    pack,
    read_nonce,
    read_secret,
    recv_frame,
    send_frame,
    unpack,
)

SECRET = b"s" * 32


def exchange(payload: bytes, *, secret: bytes = SECRET, their_secret: bytes = SECRET, max_bytes: int = 1 << 20):
    """Send one request frame over a socket pair; return what the receiving end makes of it."""
    a, b = socket.socketpair()
    with a, b:
        nonce, opening = nonce_frame(app_code_hash())
        a.sendall(opening)
        got_nonce, code = read_nonce(b)
        assert got_nonce == nonce and code == app_code_hash()
        sender = threading.Thread(target=send_frame, args=(b, their_secret, got_nonce, REQUEST, payload))
        sender.start()
        try:
            return recv_frame(a, secret, nonce, (REQUEST,), max_bytes)
        finally:
            sender.join()


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


def test_a_frame_replayed_on_another_connection_fails_authentication():
    a, b = socket.socketpair()
    with a, b:
        send_frame(b, SECRET, b"n" * 32, REQUEST, b"payload")
        with pytest.raises(AuthenticationError):
            recv_frame(a, SECRET, b"m" * 32, (REQUEST,), 1 << 20)


def test_frames_of_an_unexpected_kind_or_protocol_are_refused():
    a, b = socket.socketpair()
    with a, b:
        send_frame(b, SECRET, b"n" * 32, REPLY, b"payload")
        with pytest.raises(ChannelError, match="unexpected frame kind"):
            recv_frame(a, SECRET, b"n" * 32, (REQUEST,), 1 << 20)
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"GET / HTTP/1.1\r\n" + b"\0" * 64)
        with pytest.raises(ChannelError, match="bad magic"):
            recv_frame(a, SECRET, b"n" * 32, (REQUEST,), 1 << 20)


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
        b.sendall(b"FRW1Q")
        b.close()
        with pytest.raises(ChannelError, match="closed mid-frame"):
            recv_frame(a, SECRET, b"n" * 32, (REQUEST,), 1 << 20)


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
