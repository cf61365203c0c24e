"""A real warm worker process and the ClientApp that forwards to it.

The worker is started as a user would start it (``python -m
fedrouter_app.runtime.worker``); replies through it must equal the replies the
ClientApp computes itself, bit for bit, including when the worker dies
mid-message and is replaced.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from bench.processes import pids_mentioning, stop
from fedrouter_app.apps.client_app import handle
from fedrouter_app.client.client_handler import handle_message
from fedrouter_app.compat.flwr_internals import set_message_id, set_task_identity
from fedrouter_app.config.compose import config_fingerprint, load_run_config
from fedrouter_app.federation.communicator import HELLO
from fedrouter_app.federation.nodes import FINGERPRINT
from fedrouter_app.federation.records import ADAPTER, CONFIG, adapter_record
from fedrouter_app.model.loading import cached_adapter_model
from fedrouter_app.runtime.worker_channel import (
    ChannelError,
    WorkerAddress,
    lock_path,
    read_client_hello,
    worker_opening,
)
from fedrouter_app.runtime.worker_client import CodeMismatchError, connect, forward, worker_alive
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[3]
OVERRIDES = [*TINY, "method=fedit"]


def start_worker(sock: Path, *extra: str) -> subprocess.Popen:
    """``python -m fedrouter_app.runtime.worker`` as its user starts it, logging next to the socket."""
    log = sock.with_suffix(".out").open("ab")
    cmd = [sys.executable, "-m", "fedrouter_app.runtime.worker", "--socket", str(sock), "--cpus", "1", *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def wait_until_serving(sock: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, sock.with_suffix(".out").read_text()[-3000:]
        try:
            conn, *_ = connect(WorkerAddress(sock, Path(f"{sock}.secret")))
            conn.close()
            return
        except (ChannelError, OSError):
            time.sleep(0.2)
    pytest.fail(f"worker on {sock} did not answer in {timeout} s")


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, adapter_model: Any) -> Iterator[tuple[Path, subprocess.Popen]]:
    """One worker for the module (the embedded model is built before it starts); every worker stopped after."""
    directory = tmp_path_factory.mktemp("worker")
    sock = directory / "node.sock"
    proc = start_worker(sock)
    try:
        wait_until_serving(sock, proc)
        yield sock, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        stop(pids_mentioning(str(directory)), grace=5)  # workers the ClientApp started in its place


def context(node_config: dict[str, Any], overrides: list[str] = OVERRIDES) -> Context:
    run_config = {"method": "", "scenario": "", "overrides": " ".join(overrides)}
    return Context(run_id=7, node_id=1005, node_config=node_config, state=RecordDict(), run_config=run_config)


def message(content: RecordDict, message_type: str) -> Message:
    set_task_identity(run_id=7, node_id=0, task_id=0)  # set by Flower in a ServerApp
    msg = Message(content, dst_node_id=1005, message_type=message_type)
    set_message_id(msg, uuid.uuid4().hex)  # set by the SuperLink in a federation
    return msg


def train_message(overrides: list[str] = OVERRIDES) -> Message:
    cfg = load_run_config(overrides)
    start = cached_adapter_model(cfg.model, cfg.lora).initial_state(cfg.seed)
    config = ConfigRecord({"server-round": 1, "num-rounds": 2, "lr": 3e-3})
    return message(RecordDict({ADAPTER: adapter_record(start), CONFIG: config}), "train")


def same_reply(a: Message, b: Message) -> None:
    """Equal arrays bit for bit, equal metrics (wall-clock seconds aside)."""
    assert set(a.content.array_records) == set(b.content.array_records)
    for name, record in a.content.array_records.items():
        for key, array in record.items():
            np.testing.assert_array_equal(array.numpy(), b.content.array_records[name][key].numpy(), strict=True)
    drop = {"train-seconds"}
    for name, record in a.content.metric_records.items():
        other = b.content.metric_records[name]
        assert {k: v for k, v in record.items() if k not in drop} == {k: v for k, v in other.items() if k not in drop}


@pytest.mark.slow
def test_replies_through_the_worker_equal_the_clientapps_own(worker):
    sock, _ = worker
    fingerprint = config_fingerprint(load_run_config(OVERRIDES))
    hello = message(RecordDict({CONFIG: ConfigRecord({FINGERPRINT: fingerprint})}), HELLO)
    for msg in (hello, train_message()):
        local, remote = context({"partition-id": 1}), context({"partition-id": 1, "worker": str(sock)})
        same_reply(handle(msg, local), handle(msg, remote))
        assert remote.state == local.state


@pytest.mark.slow
def test_a_worker_killed_mid_message_is_replaced_and_the_message_sent_again(worker):
    sock, proc = worker
    overrides = [*OVERRIDES, "train.local_steps=60"]  # long enough to die in the middle
    msg, ctx = train_message(overrides), context({"partition-id": 2, "worker": str(sock)}, overrides)
    log = sock.with_suffix(".out")
    seen = len(log.read_text())
    results: list[Any] = []
    sender = threading.Thread(
        target=lambda: results.append(forward(WorkerAddress.from_node_config(ctx.node_config), msg, ctx, cpus=1))
    )
    sender.start()
    deadline = time.monotonic() + 120
    while "[run 7 client 2] train: working" not in log.read_text()[seen:]:
        assert time.monotonic() < deadline and sender.is_alive(), log.read_text()[seen:]
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # mid-message: the worker has started on it
    sender.join(timeout=300)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    (result,) = results
    assert result.timing["starts"] == 1.0, "a new worker was started in place of the killed one"
    assert worker_alive(WorkerAddress(sock, Path(f"{sock}.secret")))
    expected = handle_message(msg, context({"partition-id": 2}, overrides))
    same_reply(expected, Message(result.content, reply_to=msg))


@pytest.mark.slow
def test_handler_errors_come_back_with_their_type_and_reason(worker):
    sock, _ = worker
    ctx = context({"partition-id": 99, "worker": str(sock)})
    with pytest.raises(ValueError, match=r"partition-id 99 is outside \[0, 4\)"):
        handle(train_message(), ctx)


@pytest.mark.slow
def test_a_second_worker_on_a_served_socket_refuses_to_start(worker):
    sock, _ = worker
    second = subprocess.run(
        [sys.executable, "-m", "fedrouter_app.runtime.worker", "--socket", str(sock)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode != 0 and "another worker already serves" in second.stderr


@pytest.mark.slow
def test_a_worker_exits_soon_after_its_owner_and_frees_the_socket(tmp_path):
    owner = subprocess.Popen(["sleep", "300"])  # stands in for the SuperNode
    sock = tmp_path / "owned.sock"
    proc = start_worker(sock, "--owner-pid", str(owner.pid))
    try:
        wait_until_serving(sock, proc)
        time.sleep(1)
        assert proc.poll() is None, "the worker runs on while its owner lives"
        owner.kill()  # left unreaped until the end: a killed SuperNode stays a zombie until its parent waits
        killed = time.monotonic()
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - killed < 5
    finally:
        owner.kill()
        owner.wait()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not sock.exists()
    assert not worker_alive(WorkerAddress(sock, Path(f"{sock}.secret"))), "the lock is free for the next worker"
    assert f"(pid {owner.pid}) has exited: exiting" in sock.with_suffix(".out").read_text()


@pytest.mark.slow
def test_a_clientapp_with_another_secret_is_refused(worker, tmp_path):
    sock, _ = worker
    wrong = tmp_path / "wrong.secret"
    wrong.write_bytes(b"w" * 32)
    wrong.chmod(0o600)
    ctx = context({"partition-id": 1, "worker": str(sock), "worker-secret": str(wrong), "worker-autostart": False})
    with pytest.raises(ChannelError, match="does not prove it holds this node's worker secret"):
        handle(train_message(), ctx)


def test_an_impostor_listener_learns_nothing(tmp_path):
    # A process that bound the socket path first, without the node's secret: it answers like a worker would.
    sock = tmp_path / "node.sock"
    secret = tmp_path / "node.sock.secret"
    secret.write_bytes(b"s" * 32)
    secret.chmod(0o600)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock))
    server.listen(4)
    received: list[bytes] = []

    def impostor() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                nonce = read_client_hello(conn)
                received.append(nonce)
                conn.sendall(worker_opening(b"guess" * 8, nonce, b"c" * 32)[1])  # a proof of another secret
                conn.settimeout(2)
                while chunk := conn.recv(1 << 16):
                    received.append(chunk)

    thread = threading.Thread(target=impostor, daemon=True)
    thread.start()
    lock = os.open(lock_path(sock), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as a live worker would: the ClientApp must not start one in its place
    msg = train_message()
    ctx = context({"partition-id": 1, "worker": str(sock), "worker-autostart": False})
    try:
        with pytest.raises(ChannelError, match="does not prove it holds this node's worker secret"):
            handle(msg, ctx)
    finally:
        server.close()
        os.close(lock)
        thread.join(timeout=5)
    # One connection, and nothing in it but the client's random nonce: no byte of the request.
    assert len(received) == 1 and len(received[0]) == 32


def test_without_a_worker_and_autostart_off_the_message_fails_with_what_to_do(tmp_path):
    ctx = context({"partition-id": 1, "worker": str(tmp_path / "none.sock"), "worker-autostart": False})
    with pytest.raises(ChannelError, match=r"no worker serves .* start one with fedrouter-worker"):
        handle(train_message(), ctx)


def test_a_worker_running_other_app_code_is_left_alone_and_the_clientapp_does_the_work(tmp_path):
    sock = tmp_path / "other.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock))
    server.listen(4)
    opened = []

    def serve_wrong_code() -> None:
        # A worker's opening bytes with another code hash; a user's worker (not ours to stop) holds the lock.
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            opened.append(1)
            nonce = read_client_hello(conn)
            conn.sendall(worker_opening(b"s" * 32, nonce, b"c" * 32)[1])  # it holds the secret, runs other code
            conn.close()

    (tmp_path / "other.sock.secret").write_bytes(b"s" * 32)
    (tmp_path / "other.sock.secret").chmod(0o600)
    thread = threading.Thread(target=serve_wrong_code, daemon=True)
    thread.start()
    lock = os.open(lock_path(sock), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with pytest.raises(CodeMismatchError):
            connect(WorkerAddress(sock, tmp_path / "other.sock.secret"))
        msg = train_message()
        reply = handle(msg, context({"partition-id": 1, "worker": str(sock), "worker-autostart": False}))
    finally:
        server.close()
        os.close(lock)
    assert opened, "the ClientApp asked the worker first"
    same_reply(handle_message(msg, context({"partition-id": 1})), reply)


def test_the_clientapp_module_imports_no_torch_transformers_or_peft():
    code = (
        "import sys, time; t = time.perf_counter(); import fedrouter_app.apps.client_app; "
        "print(time.perf_counter() - t, *[m for m in ('torch', 'transformers', 'peft') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    seconds, *heavy = out.stdout.split()
    assert heavy == [], f"the ClientApp module imports {heavy}"
    assert float(seconds) < 30
