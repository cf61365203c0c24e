"""The ClientApp: every message goes to the run's method, with a ClientEnv.

Handlers are generic: the method named in the config decides what a message
means. The base model is cached per process (see ``model.loading``); client
state lives in ``context.state``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.base import DEFAULT_ACTION
from fedrouter_app.checkpoint import CHECKPOINT_ROUND, RUN_KEY, STATE_MARKER, ClientStateStore
from fedrouter_app.client_env import ClientEnv, client_data
from fedrouter_app.config import config_fingerprint, load_run_config, overrides_from_run_config
from fedrouter_app.dp import dp_clipping_mod
from fedrouter_app.logs import get_logger
from fedrouter_app.records import CLIENT_ID, CONFIG, METRICS, NUM_EXAMPLES
from fedrouter_app.registry import client_class, method_names
from fedrouter_app.rounds import FINGERPRINT

log = get_logger(__name__)


def build_env(context: Context, overrides: Sequence[str]) -> ClientEnv:
    """The environment of one message: config, this node's partition, its state."""
    all_overrides = (*overrides_from_run_config(context.run_config), *overrides)
    cfg = load_run_config(all_overrides)
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config.get("num-partitions", cfg.num_clients))
    if num_partitions != cfg.num_clients:
        raise ValueError(
            f"node has num-partitions={num_partitions} but the config says num_clients={cfg.num_clients}; "
            "make them agree (federation num-supernodes or --node-config)"
        )
    return ClientEnv(cfg=cfg, data=client_data(cfg, repr(all_overrides), partition_id), state=context.state)


def hello(msg: Message, env: ClientEnv) -> Message:
    """Answer the server's registration: partition id, data sizes, config check."""
    expected = msg.content.config_records[CONFIG].get(FINGERPRINT)
    if expected != (mine := config_fingerprint(env.cfg)):
        raise ValueError(
            f"client config fingerprint {mine} differs from the server's {expected}: "
            "this node runs a different app version or configuration"
        )
    metrics = MetricRecord(
        {CLIENT_ID: env.client_id, NUM_EXAMPLES: len(env.data.train), "num-test-examples": len(env.data.test)}
    )
    return Message(RecordDict({METRICS: metrics}), reply_to=msg)


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


def make_client_app(overrides: Sequence[str] = ()) -> ClientApp:
    """A ClientApp that adds ``overrides`` to whatever the run config says."""
    # Flower's fixedclipping_mod for dp.mode=client; a no-op unless the server sends a clipping norm.
    app = ClientApp(mods=[dp_clipping_mod])

    def handle(msg: Message, context: Context) -> Message:
        env = build_env(context, overrides)
        saved = saved_state(env, msg)
        if saved is not None:
            restore(env, saved[0], saved[2])
        category, _, action = msg.metadata.message_type.partition(".")
        method = client_class(env.cfg.method.name)(env)
        content = method.handle(category, action or DEFAULT_ACTION, msg.content)
        if saved is not None:
            saved[0].save(env.state, saved[1], saved[2])
        return Message(env.stamp(content), reply_to=msg)

    app.train()(handle)
    app.evaluate()(handle)

    @app.query("close")
    def query_close(msg: Message, context: Context) -> Message:
        env = build_env(context, overrides)
        saved = saved_state(env, msg)
        if saved is not None:
            saved[0].clear()
        return Message(env.stamp(RecordDict()), reply_to=msg)

    @app.query("hello")
    def query_hello(msg: Message, context: Context) -> Message:
        return hello(msg, build_env(context, overrides))

    extra = {a for name in method_names() for a in client_class(name).actions}
    for message_type in sorted(extra):
        category, action = message_type.split(".")
        getattr(app, category)(action)(handle)
    return app


app = make_client_app()
