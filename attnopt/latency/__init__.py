"""`attnopt bench`: latency of the same model before and after optimization, on every backend at hand."""
