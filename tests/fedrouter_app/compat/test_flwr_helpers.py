"""What fedrouter calls outside Flower's public API: still there, still doing what the callers need."""

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from fedrouter_app.compat import flwr_helpers, flwr_internals
from fedrouter_app.compat.flwr_helpers import (
    KEY_CLIPPING_NORM,
    ErrorCode,
    ProtoContext,
    ProtoRecordDict,
    aggregate_krum,
    aggregate_median,
    aggregate_trimmed_avg,
    compute_stdv,
    context_from_proto,
    context_to_proto,
    get_norm,
    is_http_grid,
    recorddict_from_proto,
    recorddict_to_proto,
)


def test_both_fences_test_the_same_flower():
    assert flwr_helpers.TESTED_FLWR == flwr_internals.TESTED_FLWR
    assert flwr_helpers.FLWR_VERSION == flwr_internals.FLWR_VERSION


def test_contexts_and_records_survive_the_protobuf_round_trip():
    # Messages go the same way; tests/fedrouter_app/runtime/test_worker.py sends real ones through the channel.
    content = RecordDict({"a": ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3))}),
                          "c": ConfigRecord({"lr": 0.1})})  # fmt: skip
    records = recorddict_from_proto(ProtoRecordDict.FromString(recorddict_to_proto(content).SerializeToString()))
    np.testing.assert_array_equal(records.array_records["a"]["w"].numpy(), np.arange(6).reshape(2, 3))
    context = Context(run_id=1, node_id=2, node_config={"partition-id": 3}, state=RecordDict(), run_config={})
    again = context_from_proto(ProtoContext.FromString(context_to_proto(context).SerializeToString()))
    assert again.node_config["partition-id"] == 3


def test_dp_helpers_and_robust_aggregates():
    assert isinstance(KEY_CLIPPING_NORM, str) and KEY_CLIPPING_NORM
    assert np.isclose(get_norm([np.array([3.0]), np.array([4.0])]), 5.0)
    assert np.isclose(compute_stdv(noise_multiplier=1.0, clipping_norm=2.0, num_sampled_clients=4), 0.5)
    updates = [([np.array([float(v)])], 1) for v in (0.0, 1.0, 2.0, 100.0)]
    assert aggregate_median(updates)[0][0] == 1.5
    assert aggregate_trimmed_avg(updates, 0.25)[0][0] == 1.5
    assert aggregate_krum(updates, num_malicious=1, to_keep=0)[0][0] in (0.0, 1.0, 2.0)  # never the outlier


def test_error_codes_and_grid_kinds():
    assert isinstance(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, int)
    assert not is_http_grid(object())
