"""Code shared by nodes, the coordinator and the scoring API: contract, encoding, model, metrics."""
