"""The built-in input projectors: shapes, gradients, LLaVA parity, pooling and the errors users see."""

from __future__ import annotations

import pytest
import torch

from mmllm_sdk.default_plugins.projectors import (
    PROJECTORS,
    MLPProjector,
    PoolProjector,
    QFormerProjector,
    ResamplerProjector,
    register_projectors,
)
from mmllm_sdk.errors import DimensionError, SpecError

D_IN, D_LLM, N = 12, 20, 16
SMALL = {  # tiny sizes per projector
    "linear": {},
    "mlp": {},
    "qformer": {"num_queries": 4, "num_heads": 2, "hidden_dim": 8},
    "resampler": {"num_latents": 3, "num_heads": 2, "hidden_dim": 8},
    "pool": {"num_tokens": 4},
}
EXPECTED_M = {"linear": N, "mlp": N, "qformer": 4, "resampler": 3, "pool": 4}


def build(cls, num_input_tokens=N, **params):
    return cls(in_dim=D_IN, out_dim=D_LLM, num_input_tokens=num_input_tokens, params={**SMALL[cls.name], **params})


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def test_register_projectors_registers_every_builtin_by_name():
    registered = {}
    register_projectors(lambda name, factory: registered.__setitem__(name, factory))
    assert {name: lazy.resolve() for name, lazy in registered.items()} == {cls.name: cls for cls in PROJECTORS}
    assert set(registered) == {"linear", "mlp", "qformer", "resampler", "pool"}


@pytest.mark.parametrize("cls", PROJECTORS, ids=lambda c: c.name)
def test_projector_maps_batch_to_m_llm_tokens_and_trains(cls):
    projector = build(cls)
    out = projector(torch.randn(2, N, D_IN))
    assert out.shape == (2, EXPECTED_M[cls.name], D_LLM)
    assert projector.num_tokens == EXPECTED_M[cls.name]
    out.pow(2).mean().backward()
    for name, parameter in projector.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", PROJECTORS, ids=lambda c: c.name)
def test_projector_builds_and_runs_on_meta_device(cls):
    with torch.device("meta"):
        projector = build(cls)
        out = projector(torch.empty(2, N, D_IN))
    assert all(p.is_meta for p in projector.parameters())
    assert out.shape == (2, EXPECTED_M[cls.name], D_LLM)


@pytest.mark.parametrize("cls", PROJECTORS, ids=lambda c: c.name)
def test_unknown_param_is_a_spec_error_naming_the_field(cls):
    with pytest.raises(SpecError, match="num_querys") as error:
        build(cls, num_querys=4)
    assert "is not a known field" in str(error.value)
    assert not isinstance(error.value, DimensionError)


@pytest.mark.parametrize("cls", PROJECTORS, ids=lambda c: c.name)
@pytest.mark.parametrize("shape", [(2, N, D_IN + 1), (2, N - 1, D_IN), (N, D_IN)])
def test_wrong_input_shape_is_a_dimension_error_with_both_shapes(cls, shape):
    projector = build(cls)
    with pytest.raises(DimensionError) as error:
        projector(torch.randn(*shape))
    message = str(error.value)
    assert f"(B, {N}, {D_IN})" in message
    assert str(tuple(shape)) in message


def test_mlp_has_llava_structure_linear_1_gelu_linear_2():
    mlp = build(MLPProjector)
    assert list(mlp.state_dict()) == ["linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"]
    assert (mlp.linear_1.in_features, mlp.linear_1.out_features) == (D_IN, D_LLM)  # hidden_dim defaults to out_dim
    assert (mlp.linear_2.in_features, mlp.linear_2.out_features) == (D_LLM, D_LLM)
    assert isinstance(mlp.act, torch.nn.GELU) and mlp.act.approximate == "none"


def test_mlp_state_dict_loads_into_transformers_llava_projector_with_equal_output():
    from transformers import LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": D_IN, "num_attention_heads": 2},
        text_config={"model_type": "llama", "hidden_size": D_LLM, "num_attention_heads": 2},
        projector_hidden_act="gelu",
    )
    reference = LlavaMultiModalProjector(config)
    ours = build(MLPProjector)
    reference.load_state_dict(ours.state_dict())
    features = torch.randn(2, N, D_IN)
    torch.testing.assert_close(ours(features), reference(features))


def test_mlp_num_layers_and_hidden_dim_add_linear_layers():
    mlp = build(MLPProjector, num_layers=3, hidden_dim=7)
    shapes = [(layer.in_features, layer.out_features) for layer in (mlp.linear_1, mlp.linear_2, mlp.linear_3)]
    assert shapes == [(D_IN, 7), (7, 7), (7, D_LLM)]
    assert not hasattr(mlp, "linear_4")
    single = build(MLPProjector, num_layers=1)
    assert [name for name, _ in single.named_parameters()] == ["linear_1.weight", "linear_1.bias"]
    assert single(torch.randn(2, N, D_IN)).shape == (2, N, D_LLM)


def test_mlp_num_layers_zero_is_a_spec_error():
    with pytest.raises(SpecError, match="num_layers"):
        build(MLPProjector, num_layers=0)


@pytest.mark.parametrize(("cls", "field"), [(QFormerProjector, "num_queries"), (ResamplerProjector, "num_latents")])
@pytest.mark.parametrize("num_input_tokens", [1, 5, 49])
def test_query_projectors_emit_their_query_count_whatever_n(cls, field, num_input_tokens):
    projector = build(cls, num_input_tokens=num_input_tokens, **{field: 6})
    assert projector.num_tokens == 6
    assert projector(torch.randn(2, num_input_tokens, D_IN)).shape == (2, 6, D_LLM)


def test_query_projector_defaults():
    qformer = QFormerProjector(in_dim=30, out_dim=64, num_input_tokens=N, params={})
    assert (qformer.num_tokens, len(qformer.layers), qformer.hidden_dim) == (32, 2, 32)  # 30 rounded up to 8 heads
    resampler = ResamplerProjector(in_dim=64, out_dim=48, num_input_tokens=N, params={})
    assert (resampler.num_tokens, len(resampler.layers), resampler.hidden_dim) == (64, 2, 48)


@pytest.mark.parametrize("cls", [QFormerProjector, ResamplerProjector], ids=lambda c: c.name)
def test_heads_not_dividing_hidden_dim_is_a_dimension_error_naming_both(cls):
    with pytest.raises(DimensionError, match=r"hidden_dim 30 is not divisible by num_heads 8.*multiple of 8"):
        build(cls, hidden_dim=30, num_heads=8)


def test_pool_takes_16_tokens_by_default_or_all_of_a_shorter_sequence():
    assert PoolProjector(in_dim=D_IN, out_dim=D_LLM, num_input_tokens=64, params={}).num_tokens == 16
    assert PoolProjector(in_dim=D_IN, out_dim=D_LLM, num_input_tokens=8, params={}).num_tokens == 8


def test_pool_avg_over_sequence_is_mean_of_consecutive_chunks():
    pool = build(PoolProjector, num_tokens=4)
    features = torch.randn(2, N, D_IN)
    expected = features.reshape(2, 4, N // 4, D_IN).mean(dim=2)  # (B, K, D)
    torch.testing.assert_close(pool.pool(features), expected)


def test_pool_max_over_sequence_is_max_of_consecutive_chunks():
    pool = build(PoolProjector, num_tokens=4, mode="max")
    features = torch.randn(2, N, D_IN)
    torch.testing.assert_close(pool.pool(features), features.reshape(2, 4, N // 4, D_IN).amax(dim=2))


def test_pool_grid_pools_2x2_blocks_of_a_row_major_grid():
    pool = build(PoolProjector, num_tokens=4, layout="grid")  # 4x4 grid -> 2x2
    features = torch.randn(2, N, D_IN)
    grid = features.reshape(2, 2, 2, 2, 2, D_IN)  # (B, row block, row, col block, col, D)
    expected = grid.mean(dim=(2, 4)).reshape(2, 4, D_IN)
    torch.testing.assert_close(pool.pool(features), expected)
    assert pool(features).shape == (2, 4, D_LLM)


def test_pool_reuses_the_mlp_projector():
    pool = build(PoolProjector, num_layers=3, hidden_dim=9)
    (mlp,) = pool.mlps
    assert isinstance(mlp, MLPProjector)
    assert mlp.linear_1.out_features == 9 and hasattr(mlp, "linear_3")


def test_pool_groups_give_each_channel_group_its_own_tokens():
    pool = build(PoolProjector, num_tokens=2, mode="max", groups=[8, 4], norm="layer")
    features = torch.randn(3, N, D_IN)
    out = pool(features)
    assert pool.num_tokens == 4 and out.shape == (3, 4, D_LLM)  # K=2 tokens per group, groups in order
    pooled = pool.pool(features)
    first = pool.mlps[0](torch.nn.functional.layer_norm(pooled[..., :8], (8,)))
    second = pool.mlps[1](torch.nn.functional.layer_norm(pooled[..., 8:], (4,)))
    torch.testing.assert_close(out, torch.cat([first, second], dim=1))


def test_pool_group_tokens_depend_only_on_their_own_channels():
    pool = build(PoolProjector, num_tokens=1, groups=[8, 4])
    features = torch.randn(2, N, D_IN)
    changed = features.clone()
    changed[..., 8:] += 5.0  # the second group's channels only
    before, after = pool(features), pool(changed)
    torch.testing.assert_close(before[:, 0], after[:, 0])
    assert not torch.allclose(before[:, 1], after[:, 1])


def test_pool_groups_that_do_not_add_up_to_in_dim_are_a_dimension_error():
    with pytest.raises(DimensionError, match=r"groups \[8, 3\] add up to 11 channels, but the encoder gives 12"):
        build(PoolProjector, groups=[8, 3])


def test_pool_layer_norm_without_groups_normalises_all_channels():
    pool = build(PoolProjector, num_tokens=1, norm="layer")
    features = torch.randn(2, N, D_IN)
    expected = pool.mlps[0](torch.nn.functional.layer_norm(pool.pool(features), (D_IN,)))
    torch.testing.assert_close(pool(features), expected)


@pytest.mark.parametrize(("num_input_tokens", "num_tokens", "bad"), [(15, 4, "15"), (16, 5, "num_tokens is 5")])
def test_pool_grid_with_non_square_counts_is_a_dimension_error(num_input_tokens, num_tokens, bad):
    with pytest.raises(DimensionError, match=bad):
        build(PoolProjector, num_input_tokens=num_input_tokens, num_tokens=num_tokens, layout="grid")


def test_pool_more_tokens_than_input_is_a_dimension_error():
    with pytest.raises(DimensionError, match=r"num_tokens 32 is more than the 16 input tokens.*<= 16"):
        build(PoolProjector, num_tokens=32)


def test_pool_unknown_mode_is_a_spec_error():
    with pytest.raises(SpecError, match="mode"):
        build(PoolProjector, mode="median")


@pytest.mark.parametrize("cls", PROJECTORS, ids=lambda c: c.name)
def test_initialise_makes_the_first_layers_read_standardised_features(cls):
    """Features that share one large direction across items: after initialise, each first layer computes on them what
    it computed before on the standardised features (per channel, over the sample's items and tokens)."""
    projector = build(cls)
    features = 5.0 + torch.randn(D_IN) * 3 + 0.05 * torch.randn(32, N, D_IN)  # a shared offset, small differences
    seen, before = {}, {layer: (layer.weight.clone(), layer.bias.clone()) for layer in projector.input_layers()}
    hooks = [layer.register_forward_hook(lambda m, args, out: seen.update({m: (args[0], out)})) for layer in before]
    projector.initialise(features)
    seen.clear()
    projector(features)
    for hook in hooks:
        hook.remove()
    assert before and set(seen) == set(before)
    for layer, (inputs, output) in seen.items():
        flat = inputs.reshape(-1, inputs.shape[-1])
        standard = (inputs - flat.mean(dim=0)) / flat.std(dim=0, correction=0)
        weight, bias = before[layer]
        torch.testing.assert_close(output, standard @ weight.T + bias, atol=1e-3, rtol=1e-3)


def test_initialise_leaves_constant_channels_unscaled_and_non_finite_samples_alone():
    projector = build(MLPProjector)
    weight = projector.linear_1.weight.clone()
    features = torch.randn(8, N, D_IN)
    features[..., 0] = 3.0  # one channel never varies
    projector.initialise(features)
    assert torch.isfinite(projector.linear_1.weight).all() and torch.equal(
        projector.linear_1.weight[:, 0], weight[:, 0]
    )
    before = projector.linear_1.weight.clone()
    features[0, 0, 1] = float("nan")
    projector.initialise(features)
    assert torch.equal(projector.linear_1.weight, before)
