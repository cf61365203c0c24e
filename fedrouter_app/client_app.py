"""The ClientApp: every message goes to the run's method, with a ClientEnv.

Handlers are generic: the method named in the config decides what a message
means. The base model is cached per process (see ``model.loading``); client
state lives in ``context.state``.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.base import DEFAULT_ACTION
from fedrouter_app.client_env import ClientEnv, client_data
from fedrouter_app.config import config_fingerprint, load_run_config, overrides_from_run_config
from fedrouter_app.records import CLIENT_ID, CONFIG, METRICS, NUM_EXAMPLES
from fedrouter_app.registry import client_class, method_names
from fedrouter_app.rounds import FINGERPRINT


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


def make_client_app(overrides: Sequence[str] = ()) -> ClientApp:
    """A ClientApp that adds ``overrides`` to whatever the run config says."""
    app = ClientApp()

    def handle(msg: Message, context: Context) -> Message:
        env = build_env(context, overrides)
        category, _, action = msg.metadata.message_type.partition(".")
        method = client_class(env.cfg.method.name)(env)
        content = method.handle(category, action or DEFAULT_ACTION, msg.content)
        return Message(env.stamp(content), reply_to=msg)

    app.train()(handle)
    app.evaluate()(handle)

    @app.query("hello")
    def query_hello(msg: Message, context: Context) -> Message:
        return hello(msg, build_env(context, overrides))

    extra = {a for name in method_names() for a in client_class(name).actions}
    for message_type in sorted(extra):
        category, action = message_type.split(".")
        getattr(app, category)(action)(handle)
    return app


app = make_client_app()
