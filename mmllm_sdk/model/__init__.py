"""Composing the five components into one model: processor, merge, forward, generate, checkpoints."""
