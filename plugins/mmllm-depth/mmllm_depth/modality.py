"""The 'depth' modality: DepthMap items read from 16-bit PNGs (millimetres) or .npy arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mmllm_sdk.components import ModalitySpec
from mmllm_sdk.errors import InputError

MODALITY = "depth"
PLACEHOLDER = "<depth>"
MAX_UINT16 = 65535
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L")  # PIL modes of a 16-bit single-channel image
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}
MODE_WORDS = {
    "1": "1-bit black-and-white",
    "L": "greyscale",
    "P": "palette",
    "LA": "greyscale+alpha",
    "PA": "palette+alpha",
}
CONVERT_HINT = (
    "If you have the raw depth in millimetres, write it with "
    "PIL.Image.fromarray(depth_mm.astype(numpy.uint16)).save(path) or cv2.imwrite(path, depth_mm.astype(numpy.uint16)); "
    "depth in metres can be saved with numpy.save(path, depth_m.astype(numpy.float32)) as a .npy file (then set the "
    "encoder's units: m). An 8-bit picture of depth (a colour map, or 0-255 grey) has lost the distances and cannot be "
    "converted back."
)


@dataclass(frozen=True, eq=False)
class DepthMap:
    """A depth map as stored in its file: float32 values ``(H, W)`` and whether the file held integers.

    The values keep the file's units (millimetres for a 16-bit PNG, usually metres for a float
    ``.npy``); the encoder's ``units`` param says which. 0 marks a pixel without depth.
    """

    values: np.ndarray  # (H, W) float32, >= 0, finite
    integer: bool  # True when the file held integers (a 16-bit PNG, an unsigned integer .npy)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DepthMap):
            return NotImplemented
        return (
            self.integer == other.integer
            and self.values.shape == other.values.shape
            and bool(np.array_equal(self.values, other.values))
        )

    __hash__ = None  # type: ignore[assignment]  # holds a mutable array

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        return (int(self.values.shape[0]), int(self.values.shape[1]))


def depth_from_array(array: Any, where: str) -> DepthMap:
    """A checked :class:`DepthMap` from a 2-D ``(H, W)`` or ``(H, W, 1)`` float or unsigned integer array.

    ``where`` names the source in error messages (a file, or "an in-memory array").
    """
    if not isinstance(array, np.ndarray):
        raise InputError(f"{where}: a depth map must be a numpy array; got {type(array).__name__}.")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]  # (H, W, 1) -> (H, W)
    if array.ndim != 2:
        raise InputError(
            f"{where} holds an array of shape {tuple(array.shape)}, but a depth map is 2-D: (H, W) or (H, W, 1). "
            "Save one depth map per file (a single channel, not RGB or a stack of frames)."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{where} holds an empty depth map of shape {tuple(array.shape)}; re-export it.")
    if array.dtype.kind not in "fu":
        hint = " Convert it with array.astype(numpy.uint16) (millimetres) or array.astype(numpy.float32) (metres)."
        raise InputError(
            f"{where} holds an array of dtype {array.dtype}, but a depth map must be float (metres or millimetres) "
            f"or unsigned integer (millimetres).{hint}"
        )
    values = array.astype(np.float32)  # (H, W)
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(values.size - np.count_nonzero(finite))
        raise InputError(
            f"{where} has {bad} non-finite value{'s' if bad != 1 else ''} (NaN or inf) of {values.size}. "
            "Missing depth must be 0: replace them with numpy.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0)."
        )
    negative = values < 0
    if negative.any():
        count = int(np.count_nonzero(negative))
        raise InputError(
            f"{where} has {count} negative value{'s' if count != 1 else ''} (the lowest is {float(values.min()):g}); "
            "depth is a distance and cannot be negative. If these mark missing depth, set them to 0; if the map "
            "holds something else (e.g. inverse depth or a signed offset), convert it to depth first."
        )
    return DepthMap(values=values, integer=array.dtype.kind == "u")


def _png_header(path: Path) -> tuple[int, str] | None:
    """(bit depth, colour type name) from a PNG file's IHDR chunk, or None when it is not a PNG."""
    with path.open("rb") as handle:
        head = handle.read(26)
    if len(head) < 26 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return head[24], PNG_COLOUR_TYPES.get(head[25], f"colour type {head[25]}")


def depth_from_image(image: Any, where: str, header: tuple[int, str] | None = None, noun: str = "PNG") -> DepthMap:
    """A :class:`DepthMap` from a 16-bit single-channel PIL image; an 8-bit or colour image is an InputError.

    ``header`` is the PNG's (bit depth, colour type) when the image was read from a file;
    ``noun`` names what it is in messages ("PNG", or "image" for an in-memory one).
    """
    if image.mode in SIXTEEN_BIT_MODES:
        return depth_from_array(np.asarray(image).astype(np.uint16), where)
    if image.mode == "I":
        array = np.asarray(image)  # (H, W) int32
        if array.size and (int(array.min()) < 0 or int(array.max()) > MAX_UINT16):
            raise InputError(
                f"{where} is a 32-bit integer (mode I) image with values from {int(array.min())} to "
                f"{int(array.max())}, outside 0..{MAX_UINT16}; a depth image holds millimetres as 16-bit unsigned "
                "integers. Clip or rescale it, or save the depth as a float32 .npy file."
            )
        return depth_from_array(array.astype(np.uint16), where)
    kind = MODE_WORDS.get(image.mode, image.mode)
    described = f"{image.mode} ({kind})" if kind != image.mode else image.mode
    if header is not None and header[0] == 16:  # 16-bit colour: Pillow reads it as 8-bit RGB(A)
        found = f"a 16-bit {header[1]} {noun} (read as {image.mode}); depth needs one channel, not colour"
    else:
        bits = header[0] if header is not None else (1 if image.mode == "1" else 8)
        found = f"{'an' if bits == 8 else 'a'} {bits}-bit {described} {noun}"
    raise InputError(
        f"{where} is {found}; depth {noun}s must be 16-bit single-channel, holding millimetres, as Kinect, "
        f"RealSense and NYU Depth write them. {CONVERT_HINT}"
    )


def load_png(path: Path) -> DepthMap:
    """A 16-bit single-channel PNG (millimetres)."""
    from PIL import Image

    where = f"The depth file {str(path)!r}"
    header = _png_header(path)
    with Image.open(path) as image:
        if image.format != "PNG":
            raise InputError(
                f"{where} holds a {image.format} image, not a PNG; depth maps are read from 16-bit PNG or .npy files. "
                "Rename it to its real suffix, or convert it."
            )
        image.load()  # decode fully now: a truncated file fails here, not later in a batch
        return depth_from_image(image, where, header)


def load_npy(path: Path) -> DepthMap:
    """A 2-D float (metres or millimetres) or unsigned integer (millimetres) numpy array."""
    where = f"The depth file {str(path)!r}"
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:  # pickled objects, or not an .npy file at all
        raise InputError(
            f"{where} is not a plain numpy array file ({exc}); save the depth with numpy.save(path, depth) "
            "from a float32 or uint16 array."
        ) from exc
    if not isinstance(array, np.ndarray):
        raise InputError(f"{where} does not hold one array; save one depth map per .npy file.")
    return depth_from_array(array, where)


def to_depth(item: Any) -> DepthMap:
    """A DepthMap from a DepthMap, a 2-D numpy array or a 16-bit single-channel PIL image."""
    if isinstance(item, DepthMap):
        checked = depth_from_array(np.asarray(item.values), "A DepthMap")
        return DepthMap(values=checked.values, integer=item.integer)
    if isinstance(item, np.ndarray):
        return depth_from_array(item, "An in-memory depth array")
    from PIL import Image

    if isinstance(item, Image.Image):
        return depth_from_image(item, "An in-memory PIL image", noun="image")
    raise InputError(
        f"A depth input must be a path (.png, .npy), a DepthMap, a 2-D numpy array or a 16-bit PIL image; "
        f"got {type(item).__name__}."
    )


DEPTH = ModalitySpec(
    name=MODALITY,
    placeholder=PLACEHOLDER,
    loaders={".png": load_png, ".npy": load_npy},
    normalize=to_depth,
    description="Depth maps: 16-bit single-channel PNG (millimetres) or 2-D .npy arrays; 0 marks missing depth.",
)
