"""The client side's work: every message goes to the run's method, with a ClientEnv.

Imported by the process that does the work: the ClientApp itself when its
node has no warm worker (and in simulation), or the node's worker
(:mod:`fedrouter_app.runtime.worker`). It imports torch, transformers, peft and every
method; :mod:`fedrouter_app.apps.client_app` imports it only when needed.

Handlers are generic: the method named in the config decides what a message
means. The base model is cached per process (see ``model.loading``); client
state lives in ``context.state``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedrouter_app.client.attacks import attack_reply, poison_data
from fedrouter_app.client.client_env import ClientEnv, RoundInfo, client_data
from fedrouter_app.clients.base import DEFAULT_ACTION
from fedrouter_app.config.compose import config_fingerprint, load_run_config
from fedrouter_app.config.run_config import naming_flat_keys, overrides_from_run_config
from fedrouter_app.data.node_local import node_client_data, uses_node_data
from fedrouter_app.federation.checkpoint import CHECKPOINT_ROUND, RUN_KEY, STATE_MARKER, ClientStateStore
from fedrouter_app.federation.client_errors import ServerVisibleError
from fedrouter_app.federation.communicator import CLOSE, HELLO, NUM_CLIENTS
from fedrouter_app.federation.nodes import FINGERPRINT
from fedrouter_app.federation.predictions import ASK as PREDICTIONS_ASK
from fedrouter_app.federation.predictions import ASK_TEXTS as PREDICTION_TEXTS
from fedrouter_app.federation.records import CLIENT_ID, CONFIG, METRICS
from fedrouter_app.logs import get_logger
from fedrouter_app.registry import client_class
from fedrouter_app.schema.checks import ConfigError
from fedrouter_app.schema.settings import RunConfig

log = get_logger(__name__)


@dataclass(frozen=True)
class NodeSettings:
    """What a node knows before it reads any data: its run config and partition id."""

    cfg: RunConfig
    partition_id: int
    # The overrides and size the partition was drawn with (they, not the composed config, key the data cache).
    data_key: str


def node_settings(context: Context, overrides: Sequence[str], num_clients: int | None = None) -> NodeSettings:
    """This node's run config and partition id, checked against each other.

    ``num_clients`` is the server's (sent with every message); where the run
    config leaves num_clients to the federation, it is used, else the node's
    ``num-partitions``.
    """
    try:
        sent = overrides_from_run_config(context.run_config)
        # The run config comes from whoever submitted the run: resolved here, an interpolation would read this
        # node's environment or files (${oc.env:...}) and could carry them back in an error message.
        resolving = [o for o in sent if "${" in o]
        if resolving:
            raise ConfigError(
                f"the run config sent to this node holds interpolations ({', '.join(resolving)}); nodes resolve none "
                "from the server: give plain values"
            )
        all_overrides = (*sent, *overrides)
        size = num_clients or _int_or_none(context.node_config.get("num-partitions"))
        cfg = load_run_config(all_overrides, size)
    except ConfigError as err:
        raise naming_flat_keys(err, context.run_config) from None
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config.get("num-partitions", cfg.num_clients))
    if not uses_node_data(cfg) and num_partitions != cfg.num_clients:
        raise ServerVisibleError(
            f"node has num-partitions={num_partitions} but the config says num_clients={cfg.num_clients}; "
            "make them agree (simulation: the federation's num-supernodes; deployment: each SuperNode's "
            "--node-config num-partitions)"
        )
    # The overrides alone do not say num_clients (it may follow the federation), and the partitions depend on it.
    return NodeSettings(cfg, partition_id, repr((all_overrides, cfg.num_clients)))


def build_env(
    context: Context, overrides: Sequence[str], server_round: int = 0, num_clients: int | None = None
) -> ClientEnv:
    """The environment of one message of ``server_round``: config, this node's data (in that round), its state."""
    node = node_settings(context, overrides, num_clients)
    cfg = node.cfg
    if uses_node_data(cfg):
        data = node_client_data(cfg, node.partition_id, context.node_config)
    else:
        data = client_data(cfg, node.data_key, node.partition_id, server_round)
    # A malicious client (attack.*) trains on poisoned responses; an honest one gets its data unchanged.
    return ClientEnv(cfg=cfg, data=poison_data(cfg, data, server_round), state=context.state)


def _int_or_none(value: object) -> int | None:
    return int(value) if isinstance(value, int | str) and str(value).strip().isdigit() else None


def message_num_clients(msg: Message) -> int | None:
    """The run's num_clients as the server sent it with ``msg`` (None from a server that does not send it)."""
    config = msg.content.config_records.get(CONFIG)
    value = config.get(NUM_CLIENTS) if config is not None else None
    return int(value) if isinstance(value, int) and value > 0 else None


def hello(msg: Message, node: NodeSettings) -> Message:
    """Answer the server's registration: partition id and config check.

    Generated partitions are not built here: registering a simulated
    federation of thousands of nodes costs a config check each, and a node
    builds its partition at its first round (a node's own files are read
    before, by the caller).
    """
    expected = msg.content.config_records[CONFIG].get(FINGERPRINT)
    if expected != (mine := config_fingerprint(node.cfg)):
        raise ServerVisibleError(
            f"client config fingerprint {mine} differs from the server's {expected}: "
            "this node runs a different app version or configuration"
        )
    return Message(RecordDict({METRICS: MetricRecord({CLIENT_ID: node.partition_id})}), reply_to=msg)


def saved_state(env: ClientEnv, msg: Message) -> tuple[ClientStateStore, int, int] | None:
    """This client's store of saved state, the message's round and the server's last checkpoint round.

    None when the server does not ask clients to keep their state (checkpoints off).
    """
    config = msg.content.config_records.get(CONFIG) or {}
    if RUN_KEY not in config or not env.cfg.checkpoint.client_state:
        return None
    run_key = str(config[RUN_KEY])
    if not run_key.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"invalid run key {run_key!r}")
    store = ClientStateStore(Path(env.cfg.checkpoint.client_dir), run_key, env.client_id)
    return store, int(config.get("server-round", 0)), int(config.get(CHECKPOINT_ROUND, -1))


def restore(env: ClientEnv, store: ClientStateStore, checkpoint_round: int) -> None:
    """In a fresh context (a resumed run), load the newest state saved up to the server's last checkpoint."""
    run_key = store.run_key
    marker = env.state.config_records.get(STATE_MARKER)
    if marker is not None and marker.get("key") == run_key:
        return
    if (saved := store.load(max_round=checkpoint_round)) is not None:
        for name, record in saved.items():
            env.state[name] = record
        log.info("client %d: continues from its state saved for run %s", env.client_id, run_key)
    env.state[STATE_MARKER] = ConfigRecord({"key": run_key})


def handle_method(msg: Message, env: ClientEnv) -> Message:
    """A message for the run's method (train, evaluate and the method's own actions)."""
    saved = saved_state(env, msg)
    if saved is not None:
        restore(env, saved[0], saved[2])
    category, _, action = msg.metadata.message_type.partition(".")
    config = msg.content.config_records.get(CONFIG) or {}
    # Per-example predictions go back only when the server asks for them (the client's own config may still refuse).
    env.asked_predictions, env.asked_texts = bool(config.get(PREDICTIONS_ASK)), bool(config.get(PREDICTION_TEXTS))
    method = client_class(env.cfg.method.name)(env)
    content = method.handle(category, action or DEFAULT_ACTION, msg.content)
    # A malicious client (attack.*) sends a poisoned reply; an honest one's goes out as produced.
    content = attack_reply(env, method, msg.metadata.message_type, msg.content, content)
    if saved is not None:
        saved[0].save(env.state, saved[1], saved[2])
    return Message(env.stamp(content), reply_to=msg)


def close(msg: Message, env: ClientEnv) -> Message:
    """The run is over: drop the state this client kept on its disk for resuming."""
    saved = saved_state(env, msg)
    if saved is not None:
        saved[0].clear()
    return Message(env.stamp(RecordDict()), reply_to=msg)


def handle_message(msg: Message, context: Context, overrides: Sequence[str] = ()) -> Message:
    """Do the work of any message the server sends this app, with ``overrides`` added to the run config."""
    message_type = msg.metadata.message_type
    if message_type == HELLO:
        node = node_settings(context, overrides, message_num_clients(msg))
        if uses_node_data(node.cfg):
            # A node's own files are read now: a malformed one keeps the node out of the run from the start.
            node_client_data(node.cfg, node.partition_id, context.node_config)
        return hello(msg, node)
    # The round matters to the data only under scenario.drift; messages outside rounds (hello, close) carry none.
    env = build_env(context, overrides, RoundInfo.from_content(msg.content).server_round, message_num_clients(msg))
    if message_type == CLOSE:
        return close(msg, env)
    return handle_method(msg, env)
