"""Sample depth maps and tiny encoder params the tests share."""

import numpy as np
from mmllm_sdk.testing import tiny_clip_vision_config

TINY_VISION = tiny_clip_vision_config()  # 32x32 input, 8x8 patches: 16 tokens of 24


def tiny_encoder_params(**overrides):
    """depth-vit params with a tiny random CLIP vision tower (32x32 input, 8x8 patches: 16 tokens of 24)."""
    return {"config": dict(TINY_VISION), **overrides}


def scene_millimetres(height=40, width=48, near=1200, far=3500):
    """A depth map in millimetres: a wall at `far` with a box at `near`, and a few missing (0) pixels."""
    depth = np.full((height, width), far, dtype=np.uint16)  # (H, W)
    depth[10:25, 8:20] = near
    depth[0, :5] = 0
    return depth


def save_png16(path, millimetres):
    from PIL import Image

    Image.fromarray(np.asarray(millimetres, dtype=np.uint16)).save(path)
    return path
