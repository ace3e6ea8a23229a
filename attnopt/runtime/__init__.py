"""One Runner interface (activate / infer / deactivate) over PyTorch, ONNX Runtime and TensorRT."""

from attnopt.runtime.base import Runner
from attnopt.runtime.onnxruntime import OrtRunner
from attnopt.runtime.torch import TorchRunner

__all__ = ["OrtRunner", "Runner", "TorchRunner"]
