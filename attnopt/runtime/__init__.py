"""One Runner interface (activate / infer / deactivate) over PyTorch, ONNX Runtime and TensorRT, and the
one place a runner is chosen (`choose_runner` / `runner_for`)."""

from attnopt.runtime.base import Runner
from attnopt.runtime.onnxruntime import OrtRunner
from attnopt.runtime.select import RunnerChoice, choose_runner, runner_for
from attnopt.runtime.torch import TorchRunner

__all__ = ["OrtRunner", "Runner", "RunnerChoice", "TorchRunner", "choose_runner", "runner_for"]
