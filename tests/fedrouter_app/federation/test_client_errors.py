"""A node's failure reaches the server as a general reason; its paths and data stay in the node's own log."""

from __future__ import annotations

import logging

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import ErrorCode

import fedrouter_app.apps.client_app as client_app
from fedrouter_app.compat.flwr_internals import set_task_identity
from fedrouter_app.data.errors import DataError, TooFewSamplesError
from fedrouter_app.federation.client_errors import ServerVisibleError, failure_reply, public_reason
from fedrouter_app.runtime.worker_channel import ChannelError, pack
from fedrouter_app.runtime.worker_client import read_reply
from fedrouter_app.schema.checks import ConfigError

SECRET = "/home/alice/patients/visits.jsonl"


@pytest.fixture
def instruction() -> Message:
    set_task_identity(run_id=1, node_id=0, task_id=0)
    return Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=7, message_type="train")


def test_a_data_error_naming_a_path_yields_a_reply_without_it(instruction, caplog):
    err = DataError(f"{SECRET}: row 3: missing column(s) 'response'; row was {{'instruction': 'my diagnosis'}}")
    with caplog.at_level(logging.ERROR):
        reply = failure_reply(instruction, err)
    assert reply.has_error() and reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert reply.error.reason == "the node's data could not be read (DataError)"
    assert reply.metadata.reply_to_message_id == instruction.metadata.message_id
    # The node's operator gets the whole line, with its file.
    (line,) = [r.getMessage() for r in caplog.records if SECRET in r.getMessage()]
    assert line.startswith("train failed: DataError: ") and "\n" not in line


def test_the_client_app_replies_with_the_general_reason_where_its_work_raises(instruction, monkeypatch):
    def raises(msg: Message, context: Context, overrides: object = ()) -> Message:
        raise TooFewSamplesError(f"{SECRET}: 3 distinct samples, fewer than method.n_local=4")

    monkeypatch.setattr(client_app, "handle", raises)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    reply = client_app.make_client_app()(instruction, context)
    assert reply.error.reason == "the node's data could not be read (TooFewSamplesError)"
    assert "alice" not in reply.error.reason


@pytest.mark.parametrize(
    ("err", "reason"),
    [
        (FileNotFoundError(2, "No such file or directory", SECRET), "the node could not read or write a file"),
        (ConfigError(f"data={SECRET}: unknown key 'colour'"), "the node could not use the run's configuration"),
        (ChannelError(f"worker {SECRET}.sock: refused"), "the node's worker could not be reached"),
        (MemoryError(), "the node ran out of memory"),
        (KeyError(SECRET), "the node failed to handle the message"),
    ],
)
def test_every_other_failure_is_named_by_its_kind_only(err, reason):
    assert public_reason(err) == f"{reason} ({type(err).__name__})"


def test_a_refusal_meant_for_the_server_goes_as_it_is():
    err = ServerVisibleError("client config fingerprint ab12 differs from the server's cd34:\n  another version")
    assert public_reason(err) == "client config fingerprint ab12 differs from the server's cd34: another version"


def test_a_workers_error_keeps_the_reason_the_worker_gave_it():
    # The worker knows the error's real class (a DataError subclass); the ClientApp gets its name only.
    payload = pack(
        {
            "ok": False,
            "error_type": "TooFewSamplesError",
            "error": f"{SECRET}: too few samples",
            "public": public_reason(TooFewSamplesError("x")),
        },
        {},
    )
    with pytest.raises(Exception, match="too few samples") as raised:
        read_reply(payload)
    assert public_reason(raised.value) == "the node's data could not be read (TooFewSamplesError)"
