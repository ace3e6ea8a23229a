"""Use cases: what a command does, as a function with a typed result (optimize, quantize, run). They
orchestrate the passes and stages; they hold no graph rewrites of their own."""
