"""Message formats and data loading."""
