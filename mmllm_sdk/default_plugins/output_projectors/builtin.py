"""Built-in output projectors Θ_T→X: mlp and transformer-queries (NExT-GPT style).

Both take the last hidden states of the k signal tokens, ``(B, k, D_llm)``, and return the
conditioning a generator expects, ``(B, num_tokens, dim)`` (Stable Diffusion 1.5: 77 x 768).
Alignment trains them so that this conditioning comes close (L2) to the generator's own
text-encoder conditioning of the caption.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from mmllm_sdk.components.output_projector import ConditionSpec, OutputProjector
from mmllm_sdk.errors import DimensionError
from mmllm_sdk.validation import StrictModel, validate

FFN_MULT = 4  # feed-forward width of transformer-queries' layers, as a multiple of hidden_dim
OUTPUT_INIT_GAIN = 0.1  # the last layer starts at this fraction of a unit-variance init: small outputs, yet gradients
QUERY_INIT_STD = 1.0  # learned queries: distinct from the start, so each conditioning token can take its own value
POSITION_INIT_STD = 0.1  # position embeddings of the signal states: felt, yet small next to what the states carry


def init_small(linear: nn.Linear) -> None:
    """Initialise the layer that makes the conditioning: small but nonzero weights, zero bias.

    The outputs start near zero (the first loss is about the targets' own variance, not blown
    up by a random map), and every earlier parameter still gets a gradient from the first step.
    """
    nn.init.normal_(linear.weight, std=OUTPUT_INIT_GAIN / math.sqrt(linear.in_features))
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class BuiltinOutputProjector(OutputProjector):
    """What the built-ins share: a validated ``Params`` model, size checks and the input shape check."""

    name: ClassVar[str]
    Params: ClassVar[type[StrictModel]] = StrictModel

    def __init__(
        self,
        llm_dim: int,
        condition_spec: ConditionSpec,
        num_signal_tokens: int,
        params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(llm_dim, condition_spec, num_signal_tokens)
        if not isinstance(condition_spec, ConditionSpec):
            raise self.dimension_error(
                f"condition_spec is {condition_spec!r}; it must be a ConditionSpec(num_tokens, dim), as the "
                "generator's condition_spec"
            )
        for field, value in (
            ("llm_dim", llm_dim),
            ("num_signal_tokens", num_signal_tokens),
            ("condition_spec.num_tokens", condition_spec.num_tokens),
            ("condition_spec.dim", condition_spec.dim),
        ):
            if value < 1:
                raise self.dimension_error(f"{field} is {value}; it must be at least 1")
        self.params = validate(self.Params, params or {}, where=f"{self.name}.params")

    def dimension_error(self, sentence: str) -> DimensionError:
        return DimensionError(f"output projector {self.name}: {sentence}.")

    def prepare(self, signal_states: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Raise DimensionError unless ``signal_states`` is (B, k, D_llm); return it in ``weight``'s dtype."""
        expected = (self.num_signal_tokens, self.llm_dim)
        if signal_states.dim() != 3 or tuple(signal_states.shape[1:]) != expected:
            raise self.dimension_error(
                f"expected signal states of shape (B, {self.num_signal_tokens}, {self.llm_dim}) "
                f"(batch, num_signal_tokens, llm_dim), got {tuple(signal_states.shape)}; pass the last hidden "
                "states of the k signal tokens, from the LLM the projector was built for"
            )
        return signal_states.to(dtype=weight.dtype)


# mlp -----------------------------------------------------------------------------------------


class MLPOutputProjector(BuiltinOutputProjector):
    """A per-token MLP ``D_llm -> hidden -> dim`` (GELU), then a learned linear map over the token axis, k -> num_tokens.

    Output token j is ``sum_i token_map[j, i] * mlp(S_i) + token_bias[j]``: 8 signal states become
    77 conditioning vectors. ``token_bias`` holds one vector per output token, so the part of
    the conditioning that is the same for every caption (the start token of a CLIP text
    encoder, the padding) is learned directly.
    """

    name = "mlp"

    class Params(StrictModel):
        hidden_dim: int | None = Field(None, ge=1)  # width between the layers; default: condition_spec.dim
        num_layers: int = Field(2, ge=1)  # linear layers per token, GELU between each pair: linear_1 … linear_n

    def __init__(
        self,
        llm_dim: int,
        condition_spec: ConditionSpec,
        num_signal_tokens: int,
        params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(llm_dim, condition_spec, num_signal_tokens, params)
        dim, num_tokens = condition_spec.dim, condition_spec.num_tokens
        hidden = self.params.hidden_dim or dim
        widths = [llm_dim] + [hidden] * (self.params.num_layers - 1) + [dim]
        for i, (d_in, d_out) in enumerate(itertools.pairwise(widths), start=1):
            setattr(self, f"linear_{i}", nn.Linear(d_in, d_out))
        self.act = nn.GELU()
        self.token_map = nn.Linear(num_signal_tokens, num_tokens, bias=False)  # mixes tokens, the same for each channel
        self.token_bias = nn.Parameter(torch.zeros(num_tokens, dim))
        init_small(getattr(self, f"linear_{self.params.num_layers}"))

    def forward(self, signal_states: torch.Tensor) -> torch.Tensor:
        x = self.linear_1(self.prepare(signal_states, self.linear_1.weight))  # (B, k, H)
        for i in range(2, self.params.num_layers + 1):
            x = getattr(self, f"linear_{i}")(self.act(x))  # (B, k, H), the last one (B, k, dim)
        x = self.token_map(x.transpose(1, 2)).transpose(1, 2)  # (B, dim, k) -> (B, dim, num_tokens) -> (B, T, dim)
        return x + self.token_bias  # (B, num_tokens, dim)


# transformer-queries -------------------------------------------------------------------------


class TransformerQueriesProjector(BuiltinOutputProjector):
    """NExT-GPT-style: ``num_tokens`` learned queries read the k signal states through a small transformer.

    The signal states are projected to ``hidden_dim``, given learned position embeddings (the
    order of the signal tokens matters) and normalised; each decoder layer lets the queries
    attend to one another, then to the signal states, then runs a feed-forward (pre-norm,
    residual). A final LayerNorm and a linear layer give the conditioning, one query per
    conditioning token.
    """

    name = "transformer-queries"

    class Params(StrictModel):
        hidden_dim: int = Field(256, ge=1)  # width of the queries and attention; a multiple of num_heads
        num_layers: int = Field(2, ge=1)  # decoder layers
        num_heads: int = Field(4, ge=1)
        dropout: float = Field(0.0, ge=0.0, lt=1.0)  # in the attention and feed-forward, while training only

    def __init__(
        self,
        llm_dim: int,
        condition_spec: ConditionSpec,
        num_signal_tokens: int,
        params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(llm_dim, condition_spec, num_signal_tokens, params)
        p = self.params
        hidden, heads = p.hidden_dim, p.num_heads
        if hidden % heads:
            raise self.dimension_error(
                f"hidden_dim {hidden} is not divisible by num_heads {heads}; pick a hidden_dim that is a multiple "
                f"of {heads} (e.g. {heads * math.ceil(hidden / heads)}) or a num_heads that divides {hidden}"
            )
        self.hidden_dim = hidden
        self.num_queries = condition_spec.num_tokens
        self.input_proj = nn.Linear(llm_dim, hidden)
        self.positions = nn.Parameter(torch.empty(num_signal_tokens, hidden))  # one per signal token
        self.memory_norm = nn.LayerNorm(hidden)  # LLM states can be large: keep the attention logits in range
        self.queries = nn.Parameter(torch.empty(self.num_queries, hidden))
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(
                hidden,
                heads,
                FFN_MULT * hidden,
                dropout=p.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(p.num_layers)
        )
        self.norm = nn.LayerNorm(hidden)
        self.output_proj = nn.Linear(hidden, condition_spec.dim)
        nn.init.normal_(self.positions, std=POSITION_INIT_STD)
        nn.init.normal_(self.queries, std=QUERY_INIT_STD)
        init_small(self.output_proj)

    def forward(self, signal_states: torch.Tensor) -> torch.Tensor:
        states = self.prepare(signal_states, self.input_proj.weight)  # (B, k, D_llm)
        memory = self.memory_norm(self.input_proj(states) + self.positions)  # (B, k, H)
        queries = self.queries.expand(states.shape[0], -1, -1)  # (B, num_tokens, H)
        for layer in self.layers:
            queries = layer(queries, memory)  # (B, num_tokens, H)
        return self.output_proj(self.norm(queries))  # (B, num_tokens, dim)


OUTPUT_PROJECTORS: tuple[type[BuiltinOutputProjector], ...] = (MLPOutputProjector, TransformerQueriesProjector)
