"""Training recipes (built in a later issue)."""
