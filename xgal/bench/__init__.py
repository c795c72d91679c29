"""Pool-throughput benchmarking for users (`xgal bench`): engines, precision, gRPC replicas,
baselines, sweeps, FLOP counting. The INT8 and FP16 graphs it measures are the product's
(`xgal.scorer.precision`)."""
