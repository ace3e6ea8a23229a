"""Comparing outputs against a reference: metrics and tolerances."""
