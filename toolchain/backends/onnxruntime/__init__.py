"""ONNX Runtime: the FP32/FP16 ONNX artifact and its INT8 quantization (QDQ or QOperator) with ONNX Runtime's own quantizer."""
