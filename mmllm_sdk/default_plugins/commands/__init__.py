"""The built-in ``mmllm`` commands, one plugin module per group, registered through ``register_commands(cli)``.

Each module is a plugin of its own (``mmllm_sdk.plugins.DEFAULT_PLUGINS``), written as a third-party
plugin would write it. Its top level imports nothing heavy: a command imports the model code it needs
when it runs, so ``mmllm --help`` stays fast.
"""
