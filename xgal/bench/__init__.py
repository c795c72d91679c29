"""Pool-throughput benchmarking for users (`xgal bench`): engines, precision, gRPC replicas,
baselines, sweeps, FLOP counting, and the serving path's own ceiling (a scoring graph of
negligible cost, `null_graph`). The INT8 and FP16 graphs it measures are the product's
(`xgal.scorer.precision`)."""
