"""``point-bert``: farthest-point groups of a cloud, a mini PointNet per group and a Transformer over the groups."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from mmllm_sdk.components import ModalityEncoder
from mmllm_sdk.errors import DimensionError, InputError, SpecError
from mmllm_sdk.validation import StrictModel, validate
from pydantic import Field
from torch import nn

from mmllm_pointcloud import ENCODER_NAME as NAME
from mmllm_pointcloud.cloud import XYZ, PointCloud

SUBSAMPLE_SEED = 0  # the fixed seed of the permutation that subsamples clouds larger than max_points
RGB = 3  # colour channels appended to each neighbour's relative xyz with use_rgb


def subsample(cloud: PointCloud, max_points: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The cloud's arrays, or ``max_points`` of its points when it has more.

    The points kept are the first ``max_points`` of a permutation drawn with a fixed seed
    (``SUBSAMPLE_SEED``), in their original order: the same cloud always keeps the same points.
    """
    if len(cloud) <= max_points:
        return cloud.xyz, cloud.rgb
    keep = np.sort(np.random.default_rng(SUBSAMPLE_SEED).permutation(len(cloud))[:max_points])
    return cloud.xyz[keep], None if cloud.rgb is None else cloud.rgb[keep]


def normalize_points(xyz: np.ndarray) -> np.ndarray:
    """Centre on the centroid and scale so that the farthest point lies on the unit sphere (float64)."""
    centred = xyz.astype(np.float64) - xyz.astype(np.float64).mean(axis=0)  # (N, 3)
    radius = np.linalg.norm(centred, axis=1).max()
    return centred / radius if radius > 0 else centred  # a cloud of one repeated point stays at the origin


def farthest_point_sampling(points: np.ndarray, count: int) -> np.ndarray:
    """Indices of ``count`` well-spread points: start at the point farthest from the centroid, then repeatedly
    take the point farthest from those taken (the first such index on ties).

    ``points`` are centred (the centroid is the origin). A cloud with fewer than ``count``
    distinct points repeats indices once every point is taken.
    """
    chosen = np.empty(count, dtype=np.int64)
    chosen[0] = int(np.argmax((points**2).sum(axis=1)))
    nearest = ((points - points[chosen[0]]) ** 2).sum(axis=1)  # (N,) squared distance to the nearest chosen point
    for index in range(1, count):
        chosen[index] = int(np.argmax(nearest))
        nearest = np.minimum(nearest, ((points - points[chosen[index]]) ** 2).sum(axis=1))
    return chosen


def nearest_neighbours(points: np.ndarray, centres: np.ndarray, k: int) -> np.ndarray:
    """(G, k) indices of each centre's ``k`` nearest points, nearest first (ties by index).

    With fewer than ``k`` points, each list goes round its points again (neighbours repeat).
    """
    distances = ((centres[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)  # (G, N)
    order = np.argsort(distances, axis=1, kind="stable")  # (G, N)
    return order[:, np.arange(k) % points.shape[0]]  # (G, k)


def group_cloud(
    xyz: np.ndarray, rgb: np.ndarray | None, num_groups: int, group_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Point-BERT's grouping: ``(G, k, C)`` neighbourhoods relative to their centre, and the ``(G, 3)`` centres.

    C is 3 (relative xyz) or 6 (relative xyz, then the neighbours' rgb) when ``rgb`` is given.
    """
    points = normalize_points(xyz)  # (N, 3)
    centres = points[farthest_point_sampling(points, num_groups)]  # (G, 3)
    neighbours = nearest_neighbours(points, centres, group_size)  # (G, k)
    groups = points[neighbours] - centres[:, None, :]  # (G, k, 3)
    if rgb is not None:
        groups = np.concatenate([groups, rgb[neighbours].astype(np.float64)], axis=-1)  # (G, k, 6)
    return groups, centres


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with a GELU between each pair (none after the last)."""
    layers: list[nn.Module] = []
    for index, (inputs, outputs) in enumerate(itertools.pairwise(sizes)):
        if index:
            layers.append(nn.GELU())
        layers.append(nn.Linear(inputs, outputs))
    return nn.Sequential(*layers)


class PointBertEncoder(ModalityEncoder):
    """``point-bert``: Point-BERT's tokeniser front end and Transformer, trained from scratch.

    Each cloud is normalised to the unit sphere, ``num_groups`` centres are picked by
    farthest-point sampling, and each centre's ``group_size`` nearest points (relative to it)
    form a group. A mini PointNet (shared per-point MLP, max-pool, a second MLP on each point
    with the pooled feature, max-pool) turns each group into a token; an MLP of the centre
    adds a position embedding; a Transformer encoder mixes the tokens: ``(B, G, dim)``.
    """

    class Params(StrictModel):
        num_groups: int = Field(32, ge=1)  # G: centres picked by farthest-point sampling, one token each
        group_size: int = Field(32, ge=1)  # k: nearest neighbours per centre (repeated in clouds of fewer points)
        dim: int = Field(128, ge=1)  # D: width of the tokens and of the Transformer
        layers: int = Field(2, ge=1)  # Transformer encoder layers
        heads: int = Field(4, ge=1)  # attention heads; dim must be a multiple of heads
        use_rgb: bool = False  # append each neighbour's rgb to its relative xyz (clouds must have colours)
        max_points: int = Field(8192, ge=1)  # larger clouds keep this many points (a fixed-seed subsample)

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.params = p = validate(self.Params, params or {}, where=f"{NAME}.params")
        if p.dim % p.heads:
            raise DimensionError(
                f"{NAME}: dim {p.dim} is not a multiple of heads {p.heads}; each attention head takes dim / heads "
                f"channels. Pick a dim that is a multiple of {p.heads} (e.g. {p.heads * max(1, round(p.dim / p.heads))}) "
                "or a heads count that divides it."
            )
        if p.max_points < p.num_groups:
            raise SpecError(
                f"{NAME}.params.max_points is {p.max_points}, fewer than num_groups {p.num_groups}; every cloud would "
                f"repeat centres. Set max_points to at least {p.num_groups}."
            )
        self.modality = "pointcloud"
        self.num_tokens = p.num_groups  # N = G
        self.output_dim = p.dim  # D
        self.channels = XYZ + (RGB if p.use_rgb else 0)  # C
        self.point_mlp = _mlp([self.channels, p.dim, p.dim])  # per point, before the first max-pool
        self.group_mlp = _mlp([2 * p.dim, p.dim, p.dim])  # per point with the pooled group feature
        self.position = _mlp([XYZ, p.dim, p.dim])  # centre coordinates -> position embedding
        layer = nn.TransformerEncoderLayer(
            p.dim, p.heads, 4 * p.dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, p.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(p.dim)

    def preprocess(self, items: list[Any]) -> dict[str, torch.Tensor]:
        p = self.params
        if not isinstance(items, (list, tuple)) or not items:
            raise InputError(
                f"encoder {NAME!r}: preprocess() takes a non-empty list of PointClouds; got {items!r:.80}."
            )
        groups, centres = [], []
        for index, item in enumerate(items):
            if not isinstance(item, PointCloud):
                raise InputError(
                    f"encoder {NAME!r}: item {index} is a {type(item).__name__}, but this encoder takes PointClouds; "
                    "load inputs through the pointcloud modality (a .ply or .npy path, or an (N, 3) / (N, 6) array)."
                )
            if p.use_rgb and item.rgb is None:
                raise InputError(
                    f"encoder {NAME!r}: item {index} has no colours, but use_rgb is true; give clouds with red, green, "
                    "blue (a PLY with colour properties or an (N, 6) array), or set use_rgb: false."
                )
            xyz, rgb = subsample(item, p.max_points)
            item_groups, item_centres = group_cloud(xyz, rgb if p.use_rgb else None, p.num_groups, p.group_size)
            groups.append(item_groups)
            centres.append(item_centres)
        return {
            "point_groups": torch.from_numpy(np.stack(groups).astype(np.float32)),  # (B, G, k, C)
            "point_centers": torch.from_numpy(np.stack(centres).astype(np.float32)),  # (B, G, 3)
        }

    def forward(self, point_groups: torch.Tensor, point_centers: torch.Tensor) -> torch.Tensor:
        p = self.params
        expected = (p.num_groups, p.group_size, self.channels)
        if point_groups.dim() != 4 or tuple(point_groups.shape[1:]) != expected:
            raise DimensionError(
                f"encoder {NAME!r}: point_groups must be (B, {', '.join(map(str, expected))}) (B, G, k, C); got "
                f"{tuple(point_groups.shape)}. Make the batch with this encoder's preprocess()."
            )
        weight = self.norm.weight
        point_groups = point_groups.to(device=weight.device, dtype=weight.dtype)  # (B, G, k, C)
        point_centers = point_centers.to(device=weight.device, dtype=weight.dtype)  # (B, G, 3)
        features = self.point_mlp(point_groups)  # (B, G, k, D)
        pooled = features.max(dim=2, keepdim=True).values  # (B, G, 1, D)
        features = torch.cat([features, pooled.expand_as(features)], dim=-1)  # (B, G, k, 2D)
        tokens = self.group_mlp(features).max(dim=2).values  # (B, G, D)
        tokens = tokens + self.position(point_centers)  # (B, G, D)
        return self.norm(self.transformer(tokens))  # (B, G, D)
