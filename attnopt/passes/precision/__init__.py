"""Reduced precision written into the graph: fp16/bf16 Casts (cast.py, mixed.py), int8 QuantizeLinear/
DequantizeLinear or dynamic int8 kernels (int8.py, placement.py, sensitivity.py), driven by calibration
inputs (calibration.py) and measured against the fp32 model (accuracy.py)."""
