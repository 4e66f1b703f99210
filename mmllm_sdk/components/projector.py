"""InputProjector: encoder features (B, N, D_in) -> soft prompt tokens (B, M, D_llm)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class InputProjector(nn.Module, ABC):
    """The contract of an input projector Θ_X→T (trained by default).

    A factory is called as ``factory(in_dim=D_in, out_dim=D_llm, num_input_tokens=N,
    params=dict)``; the projector sets ``num_tokens`` (M), the number of LLM positions
    each item takes, and raises :class:`~mmllm_sdk.errors.DimensionError` in
    ``__init__`` when the sizes cannot fit.
    """

    in_dim: int
    out_dim: int
    num_input_tokens: int
    num_tokens: int  # M

    def __init__(self, in_dim: int, out_dim: int, num_input_tokens: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.num_input_tokens = in_dim, out_dim, num_input_tokens
        self.num_tokens = num_input_tokens  # M = N unless the projector changes it

    @abstractmethod
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, D_in) -> (B, M, D_llm)."""

    def input_layers(self) -> list[nn.Linear]:
        """The linear layers that first read the features (after any pooling or normalisation): those that
        :meth:`initialise` standardises. Default: none."""
        return []

    @torch.no_grad()
    def initialise(self, features: torch.Tensor) -> None:
        """Called once before a new projector's first training stage, with a sample of the training data's encoder
        features (items, N, D_in). Each of :meth:`input_layers` absorbs its inputs' per-channel mean and standard
        deviation over the sample, so that it starts on standardised inputs (as a linear probe does): a frozen
        encoder's features often share one large direction across items, and the differences that carry the answer
        would otherwise reach the LLM as a small part of nearly identical soft tokens."""
        seen: dict[nn.Module, torch.Tensor] = {}

        def keep(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen.setdefault(module, args[0].detach())  # returns None: the output stays as it is

        hooks = [layer.register_forward_hook(keep) for layer in self.input_layers()]
        try:
            self(features)
        finally:
            for hook in hooks:
                hook.remove()
        for layer, inputs in seen.items():
            flat = inputs.reshape(-1, inputs.shape[-1]).float()  # (items x tokens, D)
            if not flat.isfinite().all():
                continue  # left as built: the run's own checks name non-finite features
            mean, std = flat.mean(dim=0), flat.std(dim=0, correction=0)
            std = torch.where(std > 1e-6 * std.max(), std, torch.ones_like(std))  # a constant channel is not scaled
            weight = layer.weight / std.to(layer.weight.dtype)  # (out, D): W x / std
            if layer.bias is not None:
                layer.bias -= weight @ mean.to(weight.dtype)
            layer.weight.copy_(weight)
