"""TensorRT: readiness check (doctor), optimization profiles, engine build, sidecar and inspection.
Everything but build/inspect/run works without TensorRT; those need it and a CUDA GPU."""
