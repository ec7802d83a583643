"""Capacity planning: plan (search), sweep (grid) and compare (two scenarios)."""
