"""FedIT: FedAvg of one LoRA adapter (Zhang et al., "Towards Building the Federated GPT")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flwr.app import RecordDict

from fedrouter_app.aggregation import WeightedMean
from fedrouter_app.checkpoint import StrategyState
from fedrouter_app.model.lora import LoraState, LoraTemplate
from fedrouter_app.records import NUM_EXAMPLES
from fedrouter_app.registry import MethodConfig, register_strategy
from fedrouter_app.rounds import Reply
from fedrouter_app.settings import RunConfig, one_of
from strategies.base import Strategy


@dataclass
class FedITConfig(MethodConfig):
    """Settings of ``fedit``."""

    weighting: str = field(metadata={"help": "'num_examples' (FedAvg) or 'uniform'."})

    def validate(self) -> None:
        one_of("method.weighting", self.weighting, ("num_examples", "uniform"))


@register_strategy("fedit", config=FedITConfig)
class FedIT(Strategy):
    """One global adapter, averaged over the round's clients.

    Every sampled client receives the global adapter, trains it on its data and
    sends it back; the server replaces the global adapter with the mean of the
    replies, weighted by the clients' training-set sizes (or uniformly).
    """

    def __init__(self, cfg: RunConfig, template: LoraTemplate) -> None:
        super().__init__(cfg, template)
        self.global_adapter = self.initial_adapter

    def configure_train(self, server_round: int, clients: Sequence[int]) -> dict[int, RecordDict]:
        payload = self.adapter_payload(self.global_adapter)
        return {client: payload for client in clients}

    def check_train_reply(self, server_round: int, reply: Reply) -> None:
        self.require_adapter(reply)

    def aggregate_train(self, server_round: int, replies: Sequence[Reply]) -> dict[str, Any] | None:
        mean = WeightedMean()
        for reply in replies:
            weight = reply.metrics[NUM_EXAMPLES] if self.cfg.method.weighting == "num_examples" else 1.0
            mean.add(self.require_adapter(reply), weight)
        if mean.count:
            self.global_adapter = mean.result()
        return None

    def configure_evaluate(self, server_round: int, clients: Sequence[int]) -> dict[int, RecordDict]:
        return self.configure_train(server_round, clients)

    def state_dict(self) -> StrategyState:
        return StrategyState(adapters={"global": self.global_adapter})

    def load_state_dict(self, state: StrategyState) -> None:
        self.global_adapter = state.adapters["global"]

    def adapters(self) -> dict[str, LoraState]:
        return {"global": self.global_adapter}
