"""Use cases: what a command does, as a function with a typed result (optimize, quantize). They
orchestrate the passes; they hold no graph rewrites of their own."""
