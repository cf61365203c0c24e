"""A real Flower deployment on 127.0.0.1: one SuperLink, N SuperNodes, the flwr CLI.

Every component is the real executable from the environment's ``bin``
directory, started as its own process group (so its SuperExec and ClientApp
children die with it), on free ports chosen at start, with logs under the
federation's directory. :meth:`LocalFederation.close` stops everything, and
the tests and benchmarks call it in ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, TextIO

from bench.processes import descendants, pids_mentioning, stop
from fedrouter_app.federation.results import load_results

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CREDENTIALS_SCRIPT = REPO / "docker" / "generate-credentials.sh"


def _cmdline(pid: int) -> str:
    """A process's command line, or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def executable(name: str) -> str:
    """A console script installed with flwr, next to this interpreter (no PATH assumptions)."""
    path = BIN / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: install the project (pip install -e .) into this environment")
    return str(path)


class LocalFederation:
    """SuperLink + SuperNodes as real processes, and a ``flwr`` CLI configured for them.

    Parameters
    ----------
    root : Path
        Working directory: logs, ``FLWR_HOME``, credentials, run outputs.
    num_nodes : int
        SuperNodes with ``partition-id`` 0 .. num_nodes - 1.
    tls : bool
        Serve the SuperLink over HTTPS with a certificate from
        ``docker/generate-credentials.sh``; nodes and CLI verify it with the CA.
    node_auth : bool
        SuperNode authentication: the SuperLink only admits SuperNodes whose
        public key was registered with ``flwr supernode register``.
    spare_keys : int
        With ``node_auth``, extra registered key pairs ``supernode-spare-<i>``
        (e.g. for a machine that replaces a crashed one: the SuperLink turns
        away a second node with a key whose node it still counts as online).
    env : dict, optional
        Extra environment for every process (e.g. ``FEDROUTER_CACHE``).
    workers : collection of int
        Partitions whose SuperNode has a warm worker (started beside it, as docs/deploy.md says, and named in its
        node config); the others do the work in their ClientApp processes.
    node_config : dict, optional
        Extra ``--node-config`` entries per partition id (e.g. a node's own data file).
    """

    def __init__(
        self,
        root: Path,
        num_nodes: int,
        *,
        tls: bool = False,
        node_auth: bool = False,
        spare_keys: int = 0,
        env: dict[str, str] | None = None,
        workers: Collection[int] = (),
        node_config: dict[int, str] | None = None,
    ) -> None:
        self.root = root
        self.num_nodes = num_nodes
        self.spare_keys = spare_keys
        self.tls = tls
        self.node_auth = node_auth
        self.port = free_port()
        self.flwr_home = root / "flwr-home"
        self.out_dir = root / "outputs"
        self.credentials = root / "credentials"
        self.logs = root / "logs"
        self.workers = set(workers)
        self.worker_dir = root / "workers"
        self.extra_node_config = dict(node_config or {})
        self.env = {
            **os.environ,
            **(env or {}),
            # SuperExec, flwr-serverapp and flwr-clientapp are found on PATH by their parents.
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.flwr_home),
            "FEDROUTER_OUTPUT_DIR": str(self.out_dir),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
            # The SuperExec of each SuperNode asks for new tasks every second by default.
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
        }
        self.superlink: subprocess.Popen | None = None
        self.nodes: dict[int, subprocess.Popen] = {}
        self.others: list[subprocess.Popen] = []
        self._log_files: list[TextIO] = []

    # Lifecycle.

    def start(self, wait: float = 60.0) -> LocalFederation:
        """Start the SuperLink and every SuperNode; return once the SuperLink answers."""
        for path in (self.flwr_home, self.out_dir, self.logs):
            path.mkdir(parents=True, exist_ok=True)
        # The workers' sockets and secrets live in a folder only this user may enter; the worker refuses any other.
        self.worker_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.tls or self.node_auth:
            self._make_credentials()
        self._write_cli_config()
        args = [
            executable("flower-superlink"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database",
            str(self.root / "state.db"),
            "--disable-runtime-dependency-installation",
        ]
        if self.tls:
            args += [
                "--ssl-certfile",
                str(self.credentials / "server.pem"),
                "--ssl-keyfile",
                str(self.credentials / "server.key"),
                "--ssl-ca-certfile",
                str(self.credentials / "ca.crt"),
            ]
        else:
            args.append("--insecure")
        if self.node_auth:
            args.append("--enable-supernode-auth")
        self.superlink = self.spawn(args, "superlink")
        self._wait_for_port(self.port, wait, self.superlink, "superlink")
        if self.node_auth:
            for key in self.registered_keys():
                self.flwr("supernode", "register", f"{key}.pub", "deploy")
        for i in sorted(self.workers):
            self.start_worker(i)
        for i in range(self.num_nodes):
            self.start_node(i)
        return self

    def worker_socket(self, partition_id: int) -> Path:
        """The Unix socket of the worker beside the SuperNode of ``partition_id``."""
        return self.worker_dir / f"node-{partition_id}.sock"

    def start_worker(self, partition_id: int) -> subprocess.Popen:
        """Start the warm worker of ``partition_id``'s node (``fedrouter-worker``, one torch thread)."""
        args = [executable("fedrouter-worker"), "--socket", str(self.worker_socket(partition_id)), "--cpus", "1"]
        proc = self.spawn(args, f"worker-{partition_id}")
        return proc

    def kill_worker(self, partition_id: int) -> list[int]:
        """SIGKILL whatever worker serves ``partition_id``'s socket now (the first, or one started since)."""
        # The SuperNode names the socket in its --node-config too: keep the worker processes only.
        pids = [
            pid
            for pid in pids_mentioning(str(self.worker_socket(partition_id)))
            if any(name in _cmdline(pid) for name in ("fedrouter_app.runtime.worker", "fedrouter-worker"))
            and "flower-supernode" not in _cmdline(pid)
        ]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def kill_serverapps(self) -> list[int]:
        """SIGKILL every ServerApp process the SuperLink started (the server side of every run in progress)."""
        assert self.superlink is not None, "the federation is not started"
        pids = [pid for pid in descendants(self.superlink.pid) if "flwr-serverapp" in _cmdline(pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def supernode_args(self, partition_id: int, key: Path | None = None) -> list[str]:
        """Command line of the SuperNode of ``partition_id`` (``key``: another auth key than its own)."""
        args = [
            executable("flower-supernode"),
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--node-config",
            self.node_config(partition_id),
            # Each SuperNode serves its own SuperExec on a port of its own.
            "--port",
            str(free_port()),
        ]
        if self.tls:
            args += ["--root-certificates", str(self.credentials / "ca.crt")]
        else:
            args.append("--insecure")
        if self.node_auth:
            args += ["--auth-supernode-private-key", str(key or self.credentials / f"supernode-{partition_id}")]
        return args

    def node_config(self, partition_id: int) -> str:
        """The ``--node-config`` of ``partition_id``'s SuperNode."""
        parts = [f"partition-id={partition_id}", f"num-partitions={self.num_nodes}", "num-cpus=1"]
        if partition_id in self.workers:
            parts.append(f"worker='{self.worker_socket(partition_id)}'")
        if partition_id in self.extra_node_config:
            parts.append(self.extra_node_config[partition_id])
        return " ".join(parts)

    def registered_keys(self) -> list[Path]:
        """Private key paths of every key pair registered with the SuperLink (nodes' own, then spares)."""
        own = [self.credentials / f"supernode-{i}" for i in range(self.num_nodes)]
        return own + [self.credentials / f"supernode-spare-{i}" for i in range(self.spare_keys)]

    def start_node(self, partition_id: int, key: Path | None = None) -> subprocess.Popen:
        """Start (or restart) the SuperNode of ``partition_id`` (``key``: another registered key)."""
        proc = self.spawn(self.supernode_args(partition_id, key), f"supernode-{partition_id}")
        self.nodes[partition_id] = proc
        return proc

    def kill_node(self, partition_id: int) -> None:
        """SIGKILL a SuperNode and everything it started, as a crashed machine would go."""
        proc = self.nodes.pop(partition_id)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def close(self) -> None:
        """Stop every process this federation started (also those a failed test left running)."""
        procs = [*self.nodes.values(), *self.others, *([self.superlink] if self.superlink else [])]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        # Grandchildren that left the process group (none expected) still name our directory.
        stop(pids_mentioning(str(self.root)), grace=5)
        for handle in self._log_files:
            handle.close()
        self.nodes.clear()
        self.others.clear()
        self.superlink = None

    def __enter__(self) -> LocalFederation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The flwr CLI.

    def flwr(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``flwr <args>`` in the repository with this federation's FLWR_HOME."""
        proc = subprocess.run(
            [executable("flwr"), *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def submit(self, method: str, overrides: Sequence[str]) -> int:
        """``flwr run . deploy`` without streaming; return the run id."""
        run_config = f"method='{method}' overrides='{' '.join(overrides)}'"
        proc = self.flwr("run", ".", "deploy", "--run-config", run_config, "--format", "json")
        try:
            return int(json.loads(proc.stdout)["run-id"])
        except (ValueError, KeyError) as err:
            raise RuntimeError(f"flwr run gave no run id:\n{proc.stdout}\n{proc.stderr}") from err

    def run_status(self, run_id: int) -> str:
        """The run's status as ``flwr ls`` reports it (e.g. ``running``, ``finished:completed``)."""
        proc = self.flwr("ls", "deploy", "--run-id", str(run_id), "--format", "json")
        runs = json.loads(proc.stdout).get("runs", [])
        return str(runs[0]["status"]) if runs else "unknown"

    def wait_for_run(self, run_id: int, timeout: float) -> str:
        """Poll until the run finishes; return its final status (raises on timeout, with logs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.run_status(run_id)
            if status.startswith("finished"):
                return status
            time.sleep(2)
        raise TimeoutError(f"run {run_id} not finished after {timeout:g} s\n{self.log_tail()}")

    def results(self, run_name: str) -> dict[str, Any] | None:
        """The run's results so far (rounds included while it goes on), or None while it has none yet."""
        try:
            return load_results(self.out_dir / run_name)
        except (FileNotFoundError, ValueError):
            return None

    def log_tail(self, chars: int = 3000) -> str:
        """The end of every process log, for assertion messages."""
        parts = []
        for path in sorted(self.logs.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    # Internals.

    def spawn(self, args: list[str], name: str) -> subprocess.Popen:
        """Start ``args`` in a process group of its own, logging to ``logs/<name>.log``; stopped by close()."""
        handle = (self.logs / f"{name}.log").open("a")
        self._log_files.append(handle)
        proc = subprocess.Popen(
            args, cwd=self.root, env=self.env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        if name != "superlink" and not name.startswith("supernode-"):
            self.others.append(proc)
        return proc

    def _make_credentials(self) -> None:
        result = subprocess.run(
            ["bash", str(CREDENTIALS_SCRIPT), str(self.credentials), str(self.num_nodes)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{CREDENTIALS_SCRIPT.name} failed:\n{result.stdout}\n{result.stderr}")
        for i in range(self.spare_keys):
            key = self.credentials / f"supernode-spare-{i}"
            subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(key)], check=True)

    def _write_cli_config(self) -> None:
        lines = ["[superlink]", 'default = "deploy"', "", "[superlink.deploy]", f'address = "127.0.0.1:{self.port}"']
        if self.tls:
            lines.append(f'root-certificates = "{self.credentials / "ca.crt"}"')
        else:
            lines.append("insecure = true")
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")

    def _wait_for_port(self, port: int, timeout: float, proc: subprocess.Popen, name: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return
            time.sleep(0.3)
        raise TimeoutError(f"{name} not listening on {port} after {timeout:g} s\n{self.log_tail()}")
