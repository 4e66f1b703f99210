"""Built-in input projectors Θ_X→T: linear, mlp (LLaVA-1.5), qformer (BLIP-2), resampler (Flamingo) and pool."""

from __future__ import annotations

import itertools
import math
from abc import abstractmethod
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mmllm_sdk.components.projector import InputProjector
from mmllm_sdk.errors import DimensionError
from mmllm_sdk.validation import StrictModel, validate

FFN_MULT = 4  # feed-forward width of the attention projectors, as a multiple of hidden_dim


class BuiltinProjector(InputProjector):
    """What the built-ins share: a validated ``Params`` model, size checks and the input shape check."""

    name: ClassVar[str]
    Params: ClassVar[type[StrictModel]] = StrictModel

    def __init__(self, in_dim: int, out_dim: int, num_input_tokens: int, params: dict[str, Any] | None = None) -> None:
        super().__init__(in_dim, out_dim, num_input_tokens)
        for field, value in (("in_dim", in_dim), ("out_dim", out_dim), ("num_input_tokens", num_input_tokens)):
            if value < 1:
                raise self.dimension_error(f"{field} is {value}; it must be at least 1")
        self.params = validate(self.Params, params or {}, where=f"{self.name}.params")

    def dimension_error(self, sentence: str) -> DimensionError:
        return DimensionError(f"{self.name}: {sentence}.")

    def check_features(self, features: torch.Tensor) -> None:
        """Raise DimensionError unless ``features`` is (B, num_input_tokens, in_dim)."""
        if features.dim() != 3 or tuple(features.shape[1:]) != (self.num_input_tokens, self.in_dim):
            raise self.dimension_error(
                f"expected features of shape (B, {self.num_input_tokens}, {self.in_dim}) "
                f"(batch, num_input_tokens, in_dim), got {tuple(features.shape)}; the encoder's output "
                "must match the sizes the projector was built for"
            )


# linear --------------------------------------------------------------------------------------


class LinearProjector(BuiltinProjector):
    """One linear layer per token (LLaVA-1.0). M = N."""

    name = "linear"

    def __init__(self, in_dim: int, out_dim: int, num_input_tokens: int, params: dict[str, Any] | None = None) -> None:
        super().__init__(in_dim, out_dim, num_input_tokens, params)
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self.check_features(features)
        return self.linear(features)  # (B, N, D_in) -> (B, N, D_llm)

    def input_layers(self) -> list[nn.Linear]:
        return [self.linear]


# mlp -----------------------------------------------------------------------------------------


class MLPProjector(BuiltinProjector):
    """LLaVA-1.5's projector: ``linear_1 → GELU → linear_2`` (more layers add GELU + linear). M = N.

    With the default two layers the state dict is exactly transformers'
    ``LlavaMultiModalProjector`` (``linear_1``, ``linear_2``, projector_hidden_act "gelu").
    """

    name = "mlp"

    class Params(StrictModel):
        num_layers: int = Field(2, ge=1)  # linear layers, GELU between each pair: linear_1 … linear_{num_layers}
        hidden_dim: int | None = Field(None, ge=1)  # width between the layers; default: out_dim (as LLaVA)

    def __init__(self, in_dim: int, out_dim: int, num_input_tokens: int, params: dict[str, Any] | None = None) -> None:
        super().__init__(in_dim, out_dim, num_input_tokens, params)
        hidden = self.params.hidden_dim or out_dim
        widths = [in_dim] + [hidden] * (self.params.num_layers - 1) + [out_dim]
        for i, (d_in, d_out) in enumerate(itertools.pairwise(widths), start=1):
            setattr(self, f"linear_{i}", nn.Linear(d_in, d_out))
        self.act = nn.GELU()  # exact GELU, transformers' ACT2FN["gelu"]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self.check_features(features)
        x = self.linear_1(features)  # (B, N, H)
        for i in range(2, self.params.num_layers + 1):
            x = getattr(self, f"linear_{i}")(self.act(x))  # (B, N, H), the last one (B, N, D_llm)
        return x

    def input_layers(self) -> list[nn.Linear]:
        return [self.linear_1]


# qformer and resampler: M learned queries attend to the encoder features ---------------------


class AttentionParams(StrictModel):
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(8, ge=1)
    # width of the queries and attention; default: min(in_dim, out_dim) rounded up to a multiple of num_heads
    hidden_dim: int | None = Field(None, ge=1)


class LearnedQueryProjector(BuiltinProjector):
    """M learned queries, ``num_layers`` attention layers over the linearly projected features,
    a final LayerNorm and a linear layer to the LLM width. M does not depend on N."""

    Params: ClassVar[type[AttentionParams]] = AttentionParams
    count_field: ClassVar[str]  # the Params field that sets M: num_queries or num_latents

    def __init__(self, in_dim: int, out_dim: int, num_input_tokens: int, params: dict[str, Any] | None = None) -> None:
        super().__init__(in_dim, out_dim, num_input_tokens, params)
        heads = self.params.num_heads
        hidden = self.params.hidden_dim or heads * math.ceil(min(in_dim, out_dim) / heads)
        if hidden % heads:
            multiple = heads * math.ceil(hidden / heads)
            raise self.dimension_error(
                f"hidden_dim {hidden} is not divisible by num_heads {heads}; "
                f"pick a hidden_dim that is a multiple of {heads} (e.g. {multiple})"
            )
        self.hidden_dim = hidden
        self.num_tokens = getattr(self.params, self.count_field)
        self.input_proj = nn.Linear(in_dim, hidden)
        self.queries = nn.Parameter(torch.empty(self.num_tokens, hidden))
        self.layers = nn.ModuleList(self.make_layer(hidden, heads) for _ in range(self.params.num_layers))
        self.norm = nn.LayerNorm(hidden)
        self.output_proj = nn.Linear(hidden, out_dim)
        self.reset_parameters()

    def input_layers(self) -> list[nn.Linear]:
        return [self.input_proj]

    @abstractmethod
    def make_layer(self, hidden: int, heads: int) -> nn.Module:
        """One layer, called as ``layer(queries (B, M, H), features (B, N, H)) -> (B, M, H)``."""

    def reset_parameters(self) -> None:
        nn.init.normal_(self.queries, std=0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self.check_features(features)
        memory = self.input_proj(features)  # (B, N, H)
        queries = self.queries.expand(features.shape[0], -1, -1)  # (B, M, H)
        for layer in self.layers:
            queries = layer(queries, memory)  # (B, M, H)
        return self.output_proj(self.norm(queries))  # (B, M, D_llm)


class QFormerProjector(LearnedQueryProjector):
    """BLIP-2-style Q-Former: queries self-attend, cross-attend to the features, then a 4x FFN (pre-norm)."""

    name = "qformer"
    count_field = "num_queries"

    class Params(AttentionParams):
        num_queries: int = Field(32, ge=1)  # M

    def make_layer(self, hidden: int, heads: int) -> nn.Module:
        # exactly self-attention + cross-attention + feed-forward, each with a pre-norm residual
        return nn.TransformerDecoderLayer(
            hidden, heads, FFN_MULT * hidden, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )


class PerceiverLayer(nn.Module):
    """Flamingo's Perceiver Resampler layer: latents attend to [features; latents], then a feed-forward."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.norm_features = nn.LayerNorm(hidden)
        self.norm_latents = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.ffn = nn.Sequential(
            nn.LayerNorm(hidden), nn.Linear(hidden, FFN_MULT * hidden), nn.GELU(), nn.Linear(FFN_MULT * hidden, hidden)
        )

    def forward(self, latents: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        normed = self.norm_latents(latents)  # (B, M, H)
        keys = torch.cat([self.norm_features(features), normed], dim=1)  # (B, N + M, H)
        latents = latents + self.attn(normed, keys, keys, need_weights=False)[0]  # (B, M, H)
        return latents + self.ffn(latents)  # (B, M, H)


class ResamplerProjector(LearnedQueryProjector):
    """Flamingo's Perceiver Resampler: M learned latents resample any number of feature tokens."""

    name = "resampler"
    count_field = "num_latents"

    class Params(AttentionParams):
        num_latents: int = Field(64, ge=1)  # M

    def make_layer(self, hidden: int, heads: int) -> nn.Module:
        return PerceiverLayer(hidden, heads)


# pool ----------------------------------------------------------------------------------------


DEFAULT_POOLED_TOKENS = 16  # pool's K when the spec gives none (fewer when the encoder has fewer tokens)


class PoolProjector(BuiltinProjector):
    """Token compression: pool N tokens down to K (1-D over the sequence or 2-D over a square grid),
    then LLaVA's ``mlp`` to the LLM width. M = K.

    With ``groups`` the feature channels are split into groups (the stages of a multi-layer
    encoder, e.g. timm-vision's ``feature_layer: [-1, -5]``), and each group is pooled,
    normalised and projected on its own: M = K x the number of groups, the groups' tokens
    in the order of the groups. A stage whose signal is a small share of the concatenated
    channels (colour in an early stage next to a wide late one) then gets tokens of its own.
    """

    name = "pool"

    class Params(MLPProjector.Params):  # num_layers and hidden_dim configure each mlp after pooling
        num_tokens: int | None = Field(None, ge=1)  # K, at most N; default: 16, or N when the encoder gives fewer
        mode: Literal["avg", "max"] = "avg"
        layout: Literal["sequence", "grid"] = "sequence"  # grid: N and K are perfect squares
        # channel widths of the feature groups, in the encoder's order, adding up to in_dim; None: one group
        groups: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=1)
        norm: Literal["none", "layer"] = "none"  # LayerNorm over each group's channels after pooling

    def __init__(self, in_dim: int, out_dim: int, num_input_tokens: int, params: dict[str, Any] | None = None) -> None:
        super().__init__(in_dim, out_dim, num_input_tokens, params)
        p = self.params
        if p.num_tokens is None:
            p.num_tokens = min(DEFAULT_POOLED_TOKENS, num_input_tokens)
        if p.num_tokens > num_input_tokens:
            raise self.dimension_error(
                f"num_tokens {p.num_tokens} is more than the {num_input_tokens} input tokens; "
                f"pick num_tokens <= {num_input_tokens}"
            )
        if p.layout == "grid":
            for field, count in (("the number of input tokens", num_input_tokens), ("num_tokens", p.num_tokens)):
                if math.isqrt(count) ** 2 != count:
                    raise self.dimension_error(
                        f'layout "grid" needs a square number of tokens, but {field} is {count}; '
                        f"use a square such as {math.isqrt(count) ** 2 or 1} or {(math.isqrt(count) + 1) ** 2}, "
                        'or layout "sequence"'
                    )
        if p.groups is not None and sum(p.groups) != in_dim:
            raise self.dimension_error(
                f"groups {p.groups} add up to {sum(p.groups)} channels, but the encoder gives {in_dim}; list the "
                "channel width of each feature stage, in the encoder's order, so that they add up to "
                f"{in_dim}"
            )
        self.widths = list(p.groups or [in_dim])
        self.num_tokens = p.num_tokens * len(self.widths)
        mlp_params = p.model_dump(include=set(MLPProjector.Params.model_fields))
        self.norms = nn.ModuleList(nn.LayerNorm(w) if p.norm == "layer" else nn.Identity() for w in self.widths)
        self.mlps = nn.ModuleList(MLPProjector(w, out_dim, p.num_tokens, params=mlp_params) for w in self.widths)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, D_in) -> (B, K, D_in) by adaptive average or max pooling."""
        x = features.transpose(1, 2)  # (B, D, N)
        k = self.params.num_tokens
        if self.params.layout == "sequence":
            pool = F.adaptive_avg_pool1d if self.params.mode == "avg" else F.adaptive_max_pool1d
            return pool(x, k).transpose(1, 2)  # (B, K, D)
        side, k_side = math.isqrt(self.num_input_tokens), math.isqrt(k)
        grid = x.reshape(x.shape[0], x.shape[1], side, side)  # (B, D, √N, √N), row-major tokens
        pool = F.adaptive_avg_pool2d if self.params.mode == "avg" else F.adaptive_max_pool2d
        return pool(grid, k_side).flatten(2).transpose(1, 2)  # (B, D, √K, √K) -> (B, K, D)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self.check_features(features)
        groups = self.pool(features).split(self.widths, dim=-1)  # each (B, K, width)
        tokens = [mlp(norm(group)) for group, norm, mlp in zip(groups, self.norms, self.mlps, strict=True)]
        return torch.cat(tokens, dim=1)  # (B, K x groups, D_llm)

    def input_layers(self) -> list[nn.Linear]:
        return [mlp.linear_1 for mlp in self.mlps]


PROJECTORS: tuple[type[BuiltinProjector], ...] = (
    LinearProjector,
    MLPProjector,
    QFormerProjector,
    ResamplerProjector,
    PoolProjector,
)
