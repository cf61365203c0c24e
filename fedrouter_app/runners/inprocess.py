"""A Grid that delivers messages by calling a ClientApp in this process: a debugging and profiling runner.

Every client runs in this process, one after the other, through the real
ServerApp and ClientApp code: deterministic, no Ray, easy to step through or
profile, and clients can be made to misbehave (unit tests of the round loop and
of methods, the privacy and real-model benchmarks). Experiments use Flower's
real runtimes (:mod:`fedrouter_app.runners.simulation`, ``flwr run``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from fedrouter_app.compat.flwr_internals import set_message_id, set_task_identity

# Node ids deliberately differ from partition ids.
NODE_OFFSET = 1000

Fault = Callable[[Message, Message], Message | None]


class InProcessGrid:
    """Minimal ``Grid``: ``get_node_ids`` and ``send_and_receive``.

    Parameters
    ----------
    client_app : ClientApp
        The app every node runs.
    num_nodes : int
        Nodes with partition ids ``0 .. num_nodes - 1``.
    fault : callable, optional
        ``fault(instruction, reply) -> reply or None`` may replace or drop replies.
    """

    def __init__(self, client_app: ClientApp, num_nodes: int, fault: Fault | None = None) -> None:
        set_task_identity(run_id=1, node_id=0, task_id=0)
        self.client_app = client_app
        self.fault = fault
        self.sent: list[Message] = []
        self.contexts = {
            NODE_OFFSET + i: Context(
                run_id=1,
                node_id=NODE_OFFSET + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for i in range(num_nodes)
        }

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            set_message_id(msg, uuid.uuid4().hex)  # normally set by the SuperLink
            self.sent.append(msg)
            try:
                reply = self.client_app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as err:
                reply = Message(Error(code=1, reason=f"{type(err).__name__}: {err}"), reply_to=msg)
            if self.fault is not None:
                reply = self.fault(msg, reply)
            if reply is not None:
                replies.append(reply)
        return replies


def run_inprocess(overrides: list[str], num_nodes: int, fault: Fault | None = None) -> tuple[dict, Path, InProcessGrid]:
    """Run one job through the real ServerApp code on an :class:`InProcessGrid`.

    Returns the results JSON, the run directory and the grid (whose contexts
    hold every client's state).
    """
    from fedrouter_app.apps.client_app import make_client_app
    from fedrouter_app.apps.server_app import serve

    grid = InProcessGrid(make_client_app(overrides), num_nodes, fault=fault)
    run_dir = serve(grid, overrides)
    return json.loads((run_dir / "results.json").read_text()), run_dir, grid
