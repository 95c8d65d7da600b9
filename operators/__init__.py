"""Operator families, one module each; registered by name in engine.registry."""
