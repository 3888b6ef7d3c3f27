"""The one mapping between Flower records and the node runtime's messages (protos/atoll/node/v1).

Every key Atoll puts into or reads from a Flower message is named here and nowhere else. Both
sides use it: the coordinator builds requests and reads replies (server/), the node's relay
turns a Flower message into a runtime request and the runtime's reply back into records
(client/client_app.py). The proto classes are the typed view on both sides.

Light by design: the relay imports it, so it needs flwr, numpy and the generated stubs only.
Nothing here raises on hostile input from the other side: what cannot be read becomes a value
the receiver refuses (a zero setting, a tensor with an impossible shape, a malformed reply).

The keys are in `common.wire.keys`; the mapping's two halves are `common.wire.coordinator`
(requests out, replies read back) and `common.wire.relay` (a Flower message → a runtime request, a
runtime reply → records). This package re-exports all three, so callers write `wire.X` for keys
and mapping alike.
"""

from common.wire.coordinator import answered_of as answered_of
from common.wire.coordinator import evaluated_of as evaluated_of
from common.wire.coordinator import finished_of as finished_of
from common.wire.coordinator import has_histograms as has_histograms
from common.wire.coordinator import joined_of as joined_of
from common.wire.coordinator import query_record as query_record
from common.wire.coordinator import refusal_of as refusal_of
from common.wire.coordinator import request as request
from common.wire.coordinator import settings_record as settings_record
from common.wire.coordinator import trained_of as trained_of
from common.wire.keys import *  # noqa: F403  (every key, by name)
from common.wire.relay import Carrier as Carrier
from common.wire.relay import arrays_of as arrays_of
from common.wire.relay import budget_metrics as budget_metrics
from common.wire.relay import caller as caller
from common.wire.relay import evaluate_content as evaluate_content
from common.wire.relay import finish_content as finish_content
from common.wire.relay import query_content as query_content
from common.wire.relay import query_spec_of as query_spec_of
from common.wire.relay import refusal_content as refusal_content
from common.wire.relay import rollcall_content as rollcall_content
from common.wire.relay import settings_of as settings_of
from common.wire.relay import tensor_of as tensor_of
from common.wire.relay import tensor_values as tensor_values
from common.wire.relay import train_content as train_content
from common.wire.relay import weights_of as weights_of
from common.wire.relay import with_manifest as with_manifest
