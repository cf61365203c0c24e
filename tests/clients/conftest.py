import pytest
from flwr.app import RecordDict

from fedrouter_app.client.client_env import ClientEnv
from fedrouter_app.data.partition import build_client_data


@pytest.fixture
def make_env(make_cfg, adapter_model):
    def make(*overrides: str, client: int = 0, state: RecordDict | None = None) -> ClientEnv:
        cfg = make_cfg(*overrides)
        return ClientEnv(cfg=cfg, data=build_client_data(cfg, client), state=RecordDict() if state is None else state)

    return make
