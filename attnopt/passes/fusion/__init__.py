"""Recognisers: each finds the sites of one computation (attention, layernorm, ...) from its math,
rewrites those it can prove, and gives a reason for each one it leaves."""
