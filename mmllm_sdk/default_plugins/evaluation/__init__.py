"""Evaluation: scoring answers with a metric, the statistics of a score, and the reports ``mmllm eval`` writes."""
