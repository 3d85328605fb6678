"""LiteRT (TFLite): conversion through onnx2tf and TensorFlow's converter, and full-integer quantization."""
