"""Helpers shared by the test packages (tiny real-architecture checkpoints, ...)."""
