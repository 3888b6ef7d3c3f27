"""The node runtime: the owner's long-lived process that alone reads the node's data.

config (node.toml) → admission (every coordinator input against the owner's limits) → ledger
reservation and charge → data cache → DP computation → reply. `server` puts it on a local gRPC
socket (protos/atoll/node/v1/runtime.proto); `service` decides each request.
"""
