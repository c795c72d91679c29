"""The trainer: networks, training, the active-learning loop and the ONNX export."""
