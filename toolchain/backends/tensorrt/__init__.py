"""TensorRT: the ONNX-with-Q/DQ artifact and the build recipe the device turns into an engine (see edgetrt/ for the device side)."""
