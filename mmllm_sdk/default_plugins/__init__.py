"""The SDK's built-in components, registered through the same hooks a third-party plugin uses."""
