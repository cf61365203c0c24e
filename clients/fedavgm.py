"""FedAvgM client: FedIT's (the server alone adds momentum)."""

from __future__ import annotations

from fedrouter_app.clients.fedit import FedITClient
from fedrouter_app.registry import register_client


@register_client("fedavgm")
class FedAvgMClient(FedITClient):
    """Local SFT of the global adapter; evaluation with the global adapter."""
