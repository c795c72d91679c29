"""Pool-throughput benchmarking for users (`xgal bench`): engines, precision, gRPC replicas,
baselines, sweeps; FLOP counting and INT8 quantization of scoring graphs."""
