"""Helpers shared by the tests: tiny models, ONNX graphs, fake TensorRT, the emulated driver."""
