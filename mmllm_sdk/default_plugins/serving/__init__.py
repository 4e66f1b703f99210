"""``mmllm serve``: an OpenAI-compatible chat-completions server with request batching, and a chat page."""
