"""The built-in output projectors: conformance, shapes, the errors users see, fitting, and what the queries read."""

from __future__ import annotations

import pytest
import torch

from mmllm_sdk.components.hf import skeleton_mode
from mmllm_sdk.components.output_projector import ConditionSpec
from mmllm_sdk.default_plugins.output_projectors import (
    REGISTERED,
    MLPOutputProjector,
    TransformerQueriesProjector,
    register_output_projectors,
)
from mmllm_sdk.errors import DimensionError, SpecError
from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.plugins import register_plugin, unregister_plugin
from mmllm_sdk.registry import get_registry
from mmllm_sdk.testing.conformance import ConformanceError, check_output_projector

D_LLM, K = 32, 8
CONDITION = ConditionSpec(num_tokens=20, dim=48)  # SD-like, scaled down from 77 x 768
SMALL = {  # tiny sizes per projector
    "mlp": {"hidden_dim": 24},
    "transformer-queries": {"hidden_dim": 16, "num_heads": 2},
}
CLASSES = (MLPOutputProjector, TransformerQueriesProjector)


def build(cls, condition=CONDITION, num_signal_tokens=K, **params):
    return cls(
        llm_dim=D_LLM,
        condition_spec=condition,
        num_signal_tokens=num_signal_tokens,
        params={**SMALL[cls.name], **params},
    )


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@pytest.fixture
def register():
    """Register output projectors of a plugin for one test, and always remove the plugin afterwards."""
    names = []

    def add(name, factory):
        hook = staticmethod(hookimpl(lambda register: register(name, factory)))
        register_plugin(type(name, (), {"register_output_projectors": hook})(), name)
        names.append(name)

    yield add
    for name in names:
        unregister_plugin(name)


def test_register_output_projectors_registers_both_builtins_by_name():
    registered = {}
    register_output_projectors(lambda name, factory: registered.__setitem__(name, factory))
    assert {name: lazy.resolve() for name, lazy in registered.items()} == {cls.name: cls for cls in CLASSES}
    assert set(registered) == set(REGISTERED) == {"mlp", "transformer-queries"}


@pytest.mark.parametrize("name", ["mlp", "transformer-queries"])
@pytest.mark.parametrize("params", [{}, "small"])
def test_builtin_passes_the_conformance_check(name, params):
    projector = check_output_projector(name, SMALL[name] if params == "small" else params)
    assert projector.condition_spec == ConditionSpec(6, 12)


def test_conformance_check_takes_other_sizes():
    projector = check_output_projector(
        "transformer-queries",
        SMALL["transformer-queries"],
        llm_dim=20,
        num_signal_tokens=1,
        condition_spec=ConditionSpec(1, 10),  # AudioLDM-like: one vector
        batch_size=2,
    )
    assert (projector.llm_dim, projector.num_signal_tokens, projector.num_queries) == (20, 1, 1)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_k_signal_states_become_the_generators_conditioning(cls):
    projector = build(cls)
    out = projector(torch.randn(2, K, D_LLM))
    assert out.shape == (2, CONDITION.num_tokens, CONDITION.dim)
    assert (projector.llm_dim, projector.condition_spec, projector.num_signal_tokens) == (D_LLM, CONDITION, K)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_outputs_start_small_but_not_zero(cls):
    out = build(cls)(torch.randn(4, K, D_LLM))
    assert 0 < out.abs().mean() < 0.2


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_builds_in_skeleton_mode_on_meta_with_the_same_sizes(cls):
    with skeleton_mode():
        projector = build(cls)
        out = projector(torch.empty(2, K, D_LLM))
    assert all(p.is_meta for p in projector.parameters())
    assert out.shape == (2, CONDITION.num_tokens, CONDITION.dim)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_input_is_cast_to_the_weights_dtype(cls):
    projector = build(cls).to(torch.float64)
    assert projector(torch.randn(2, K, D_LLM)).dtype == torch.float64


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
@pytest.mark.parametrize("shape", [(2, K, D_LLM + 1), (2, K - 1, D_LLM), (K, D_LLM)])
def test_wrong_input_shape_is_a_dimension_error_naming_both_shapes(cls, shape):
    projector = build(cls)
    with pytest.raises(DimensionError) as error:
        projector(torch.randn(*shape))
    message = str(error.value)
    assert f"(B, {K}, {D_LLM})" in message
    assert str(tuple(shape)) in message
    assert cls.name in message


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
@pytest.mark.parametrize(
    ("sizes", "field"),
    [
        ({"num_signal_tokens": 0}, "num_signal_tokens is 0"),
        ({"condition": ConditionSpec(0, 8)}, "condition_spec.num_tokens is 0"),
        ({"condition": ConditionSpec(4, 0)}, "condition_spec.dim is 0"),
    ],
)
def test_empty_sizes_are_a_dimension_error_naming_the_size(cls, sizes, field):
    with pytest.raises(DimensionError, match=field):
        build(cls, **sizes)


def test_hidden_dim_not_a_multiple_of_num_heads_is_a_dimension_error_naming_both():
    with pytest.raises(
        DimensionError, match=r"hidden_dim 30 is not divisible by num_heads 4.*multiple of 4 \(e.g. 32\)"
    ):
        build(TransformerQueriesProjector, hidden_dim=30, num_heads=4)


@pytest.mark.parametrize("name", ["mlp", "transformer-queries"])
def test_unknown_param_is_a_spec_error_naming_it(name):
    entry = get_registry().get("output_projectors", name)
    with pytest.raises(SpecError, match=r"hiden_dim: is not a known field") as error:
        entry.build(llm_dim=D_LLM, condition_spec=CONDITION, num_signal_tokens=K, params={"hiden_dim": 8})
    assert f"{name}.params.hiden_dim" in str(error.value)
    assert "hidden_dim" in str(error.value)  # the fields that would fit
    assert not isinstance(error.value, DimensionError)


@pytest.mark.parametrize(
    ("cls", "params"),
    [
        (MLPOutputProjector, {"num_layers": 0}),
        (MLPOutputProjector, {"hidden_dim": 0}),
        (TransformerQueriesProjector, {"num_heads": 0}),
        (TransformerQueriesProjector, {"dropout": 1.0}),
    ],
)
def test_out_of_range_param_is_a_spec_error_naming_it(cls, params):
    (field,) = params
    with pytest.raises(SpecError, match=f"{cls.name}.params.{field}"):
        build(cls, **params)


def test_mlp_maps_each_state_then_mixes_k_tokens_into_num_tokens():
    mlp = build(MLPOutputProjector, num_layers=3)
    shapes = [(layer.in_features, layer.out_features) for layer in (mlp.linear_1, mlp.linear_2, mlp.linear_3)]
    assert shapes == [(D_LLM, 24), (24, 24), (24, CONDITION.dim)]
    assert not hasattr(mlp, "linear_4")
    assert (mlp.token_map.in_features, mlp.token_map.out_features) == (K, CONDITION.num_tokens)
    assert mlp.token_bias.shape == (CONDITION.num_tokens, CONDITION.dim)
    states = torch.randn(2, K, D_LLM)
    per_token = mlp.linear_3(mlp.act(mlp.linear_2(mlp.act(mlp.linear_1(states)))))  # (2, K, dim)
    expected = torch.einsum("tk,bkd->btd", mlp.token_map.weight, per_token) + mlp.token_bias
    torch.testing.assert_close(mlp(states), expected)


def test_mlp_hidden_dim_defaults_to_the_condition_dim_and_one_layer_is_linear():
    mlp = MLPOutputProjector(llm_dim=D_LLM, condition_spec=CONDITION, num_signal_tokens=K, params={})
    assert (mlp.linear_1.out_features, mlp.linear_2.in_features) == (CONDITION.dim, CONDITION.dim)
    single = build(MLPOutputProjector, num_layers=1)
    assert [name for name, _ in single.named_parameters()] == [
        "token_bias",
        "linear_1.weight",
        "linear_1.bias",
        "token_map.weight",
    ]


def test_transformer_queries_defaults_and_one_query_per_conditioning_token():
    projector = TransformerQueriesProjector(llm_dim=D_LLM, condition_spec=CONDITION, num_signal_tokens=K, params={})
    assert (projector.hidden_dim, len(projector.layers), projector.num_queries) == (256, 2, CONDITION.num_tokens)
    assert projector.queries.shape == (CONDITION.num_tokens, 256)
    assert projector.positions.shape == (K, 256)
    layer = projector.layers[0]
    assert layer.norm_first and layer.self_attn.num_heads == 4 and layer.dropout.p == 0.0


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_thirty_adam_steps_halve_the_error_to_fixed_targets(cls):
    projector = build(cls)
    states = torch.randn(4, K, D_LLM)
    # like a text encoder's conditioning: a part every caption shares (start token, padding) and a part of its own;
    # wholly independent targets for 20 tokens are out of the mlp's reach: its tokens mix only k = 8 states
    targets = torch.randn(1, CONDITION.num_tokens, CONDITION.dim) + 0.5 * torch.randn(
        4, CONDITION.num_tokens, CONDITION.dim
    )
    optimizer = torch.optim.Adam(projector.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(projector(states), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.name)
def test_thirty_adam_steps_halve_the_error_to_independent_targets_of_k_tokens(cls):
    condition = ConditionSpec(num_tokens=K, dim=48)
    projector = build(cls, condition=condition)
    states, targets = torch.randn(4, K, D_LLM), torch.randn(4, K, 48)
    optimizer = torch.optim.Adam(projector.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(projector(states), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_transformer_queries_output_depends_on_every_signal_state():
    projector = build(TransformerQueriesProjector).eval()
    states = torch.randn(2, K, D_LLM)
    with torch.no_grad():
        out = projector(states)
        for i in range(K):
            perturbed = states.clone()
            perturbed[:, i] += torch.randn(D_LLM)
            change = (projector(perturbed) - out).abs().max()
            assert change > 1e-3 * out.abs().max(), f"signal state {i} is ignored"


def test_transformer_queries_output_depends_on_the_order_of_signal_states():
    projector = build(TransformerQueriesProjector).eval()
    states = torch.randn(2, K, D_LLM)
    with torch.no_grad():
        out = projector(states)
        for reordered in (states.flip(1), states[:, torch.roll(torch.arange(K), 1)]):
            assert (projector(reordered) - out).abs().max() > 1e-3 * out.abs().max()


# the conformance check catches broken output projectors ----------------------------------------------------


class Unused(MLPOutputProjector):
    def __init__(self, llm_dim, condition_spec, num_signal_tokens, params):
        super().__init__(llm_dim, condition_spec, num_signal_tokens, params)
        self.spare = torch.nn.Linear(2, 2)


class IgnoresK(MLPOutputProjector):
    def __init__(self, llm_dim, condition_spec, num_signal_tokens, params):
        super().__init__(llm_dim, condition_spec, 2, params)


class OneTokenShort(MLPOutputProjector):
    def forward(self, signal_states):
        return super().forward(signal_states)[:, 1:]


class Noisy(MLPOutputProjector):
    def forward(self, signal_states):
        out = super().forward(signal_states)
        return out + 1e-3 * torch.randn_like(out)  # noise in eval mode too


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (Unused, r"spare.weight, spare.bias get no gradient"),
        (IgnoresK, r"num_signal_tokens is 2, but the factory was given 4"),
        (OneTokenShort, r"returned shape \(3, 5, 12\); expected .* = \(3, 6, 12\)"),
        (Noisy, r"is not deterministic in eval mode"),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else "",
)
def test_an_output_projector_that_breaks_its_contract_fails_with_the_check_named(register, cls, message):
    register("broken", cls)
    with pytest.raises(ConformanceError, match=message) as error:
        check_output_projector("broken")
    assert "output projector 'broken' (plugin 'broken')" in str(error.value)
