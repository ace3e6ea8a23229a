"""Lowering: the canonical attnopt ops -> what each target runs best (onnx, ort, trt)."""
