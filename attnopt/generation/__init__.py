"""Generation over a decoder exported with a KV cache: one greedy loop (parity and `attnopt generate`),
the runtime folder onnxruntime-genai loads, and onnxruntime-genai as an optional backend."""
