"""OpenAI chat content parts -> the SDK's message parts: each media item bounded, written to a file, and read once."""

from __future__ import annotations

import base64
import binascii
import mimetypes
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmllm_sdk.components.modality import DIRECTORY, ModalitySpec
from mmllm_sdk.default_plugins.modalities import IMAGE_SUFFIXES, MAX_VIDEO_PIXELS, VIDEO_SUFFIXES_AV
from mmllm_sdk.default_plugins.serving.protocol import APIError
from mmllm_sdk.errors import InputError, MMLLMError
from mmllm_sdk.files import read_bytes, read_url

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}  # developer: OpenAI's
OPENAI_PARTS = {"image_url": "image", "input_audio": "audio", "video_url": "video"}  # part type -> modality
MESSAGE_LENGTH = 1000  # characters of a loader's message that an error repeats
# a data URL's media type -> the suffix a loader reads; Python's mimetypes (from /etc/mime.types) is the fallback
MIME_SUFFIXES = dict(
    pair.split("=")
    for pair in """image/png=.png image/jpeg=.jpg image/jpg=.jpg image/gif=.gif image/webp=.webp image/bmp=.bmp
    image/tiff=.tiff image/x-portable-pixmap=.ppm image/x-portable-graymap=.pgm audio/wav=.wav audio/x-wav=.wav
    audio/wave=.wav audio/vnd.wave=.wav audio/flac=.flac audio/x-flac=.flac audio/mpeg=.mp3 audio/mp3=.mp3
    audio/ogg=.ogg audio/aiff=.aiff audio/x-aiff=.aiff video/mp4=.mp4 video/quicktime=.mov video/webm=.webm
    video/x-matroska=.mkv video/x-msvideo=.avi application/x-npy=.npy application/npy=.npy""".split()
)
UNTYPED = ("", "application/octet-stream")  # data URLs whose bytes say what they are (see sniff)
SIGNATURES = (  # (offset, leading bytes, suffix): formats told by their bytes, for an untyped data URL or download
    (0, b"\x89PNG\r\n\x1a\n", ".png"),
    (0, b"\xff\xd8\xff", ".jpg"),
    (0, b"GIF8", ".gif"),
    (8, b"WEBP", ".webp"),
    (8, b"WAVE", ".wav"),
    (0, b"fLaC", ".flac"),
    (0, b"OggS", ".ogg"),
    (0, b"ID3", ".mp3"),
    (4, b"ftyp", ".mp4"),
    (0, b"\x1aE\xdf\xa3", ".mkv"),
    (0, b"\x93NUMPY", ".npy"),
)


@dataclass(frozen=True)
class MediaPolicy:
    """Where media may come from and how large it may be; each bound is checked before the bytes are decoded."""

    allowed_dir: Path | None = None  # local paths / file:// only under it (after resolving symlinks); None: none
    allow_remote: bool = False  # http(s) URLs only when True
    max_item_bytes: int = 20 * 2**20  # one item's bytes (decoded from base64, read, or downloaded)
    max_pixels: int = 40_000_000  # an image's (or a video frame's) width x height, checked from the header
    max_video_pixels: int = MAX_VIDEO_PIXELS  # frames x height x width a video's header declares
    remote_timeout: float = 10.0  # seconds for one download, all in (mmllm_sdk.files.read_url)
    max_items: int = 16  # media items in one request


def to_messages(messages: list, inputs: Mapping[str, ModalitySpec], policy: MediaPolicy, scratch: Path) -> list[dict]:
    """OpenAI chat messages -> the SDK's message dicts (``{"role", "content": [parts]}``), each media part decoded
    to a file in ``scratch`` (a per-request folder the caller creates and deletes) and given as
    ``{"type": modality, "path": file}``. Each item is read once here with its modality's loader, so a bad item fails
    now, not in a batch. ``inputs``: the model's input modalities. Raises APIError(400, param=the JSON path).
    Blocking (files, downloads, decoders): call it from a worker thread."""
    return _Request(inputs, policy, Path(scratch)).messages(messages)


def part_types(inputs: Mapping[str, Any]) -> list[str]:
    """The content part types a model with these input modalities takes: ``text``, ``image_url``, ``depth``, ..."""
    aliases = {modality: kind for kind, modality in OPENAI_PARTS.items()}
    return ["text", *(aliases.get(name, name) for name in inputs)]


def sniff(data: bytes) -> str | None:
    """The suffix of a file format recognised from its first bytes, or None."""
    return next((suffix for at, magic, suffix in SIGNATURES if data[at : at + len(magic)] == magic), None)


def _refuse(param: str, message: str, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _suffixes(spec: ModalitySpec) -> list[str]:
    return sorted(suffix for suffix in spec.loaders if suffix != DIRECTORY)


def _reads(spec: ModalitySpec, suffix: str | None) -> bool:
    return suffix is not None and suffix != DIRECTORY and suffix in spec.loaders


def _mimes(spec: ModalitySpec) -> str:
    """The data URL media types whose suffix ``spec`` reads, for messages."""
    found = [mime for mime, suffix in MIME_SUFFIXES.items() if _reads(spec, suffix)]
    found += [mime for suffix in _suffixes(spec) if (mime := mimetypes.guess_type(f"x{suffix}")[0]) is not None]
    return ", ".join(dict.fromkeys(found)) or "none"


def _shape(value: Any) -> str:
    names = {dict: "an object", list: "an array" if value else "an empty array", str: "a string", type(None): "null"}
    return names.get(type(value), "a boolean" if isinstance(value, bool) else "a number")


class _Request:
    """One request's conversion: its inputs, policy and scratch folder, and how many items it has written."""

    def __init__(self, inputs: Mapping[str, ModalitySpec], policy: MediaPolicy, scratch: Path) -> None:
        self.inputs, self.policy, self.scratch, self.written = inputs, policy, scratch, 0

    def messages(self, messages: Any) -> list[dict]:
        if not isinstance(messages, list) or not messages:
            raise _refuse("messages", f"messages must be a non-empty array of messages; got {_shape(messages)}.")
        self.count_items(messages)
        return [self.message(f"messages[{index}]", message) for index, message in enumerate(messages)]

    def count_items(self, messages: list) -> None:
        """Refuse more than ``max_items`` media parts before any is decoded, naming the first one over."""
        limit, seen = self.policy.max_items, 0
        for index, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            for number, part in enumerate(content if isinstance(content, list) else []):
                seen += isinstance(part, dict) and part.get("type") != "text"
                if seen > limit:
                    at = f"messages[{index}].content[{number}]"
                    raise _refuse(
                        at,
                        f"{at} is media item {seen} of this request, over the limit of {limit} per request; send at "
                        f"most {limit} images, audio clips, videos or other items, or split them over requests.",
                        "too_many_items",
                    )

    def message(self, at: str, message: Any) -> dict:
        if not isinstance(message, dict):
            raise _refuse(at, f"{at} must be an object with 'role' and 'content'; got {_shape(message)}.")
        role = message.get("role")
        tools = [key for key in ("tool_calls", "function_call") if message.get(key)]
        if role in ("tool", "function") or tools:
            field = "role" if role in ("tool", "function") else tools[0]
            raise _refuse(
                f"{at}.{field}",
                f"{at}.{field}: this server makes no tool or function calls; send only system, user and assistant "
                "messages, without tool_calls.",
                "unsupported",
            )
        if role not in ROLES:
            raise _refuse(f"{at}.role", f"{at}.role is {role!r}; send 'system', 'user' or 'assistant'.")
        if "content" not in message:
            raise _refuse(f"{at}.content", f"{at} has no content; give it a string or an array of parts.")
        return {"role": ROLES[role], "content": self.content(f"{at}.content", ROLES[role], message["content"])}

    def content(self, at: str, role: str, content: Any) -> list[dict]:
        if isinstance(content, str):
            return [self.text(at, content)]
        if not isinstance(content, list) or not content:
            raise _refuse(at, f"{at} must be a string or a non-empty array of parts; got {_shape(content)}.")
        parts = []
        for index, part in enumerate(content):
            where = f"{at}[{index}]"
            if not isinstance(part, dict):
                raise _refuse(where, f"{where} must be an object like {{'type': 'text', 'text': '...'}}.")
            if part.get("type") == "text":
                if not isinstance(part.get("text"), str):
                    raise _refuse(f"{where}.text", f"{where}.text must be a string; got {_shape(part.get('text'))}.")
                parts.append(self.text(f"{where}.text", part["text"]))
            elif role != "user":
                raise _refuse(
                    f"{where}.type",
                    f"{where} is a part of type {part.get('type')!r} in the {role} message; system and assistant "
                    "messages hold text only. Put media in user messages.",
                )
            else:
                parts.append(self.media(where, part))
        return parts

    def text(self, at: str, text: str) -> dict:
        for modality, spec in self.inputs.items():
            if spec.placeholder in text:
                raise _refuse(
                    at,
                    f"{at} holds {spec.placeholder!r}, the token this model puts where each {modality} input goes; "
                    f"remove it from the text and send the {modality} in a {part_types({modality: spec})[1]} part.",
                )
        return {"type": "text", "text": text}

    def media(self, at: str, part: dict) -> dict:
        kind = part.get("type")
        modality = OPENAI_PARTS.get(kind, kind) if isinstance(kind, str) else None
        if modality not in self.inputs:
            from mmllm_sdk.registry import get_registry

            known = {*OPENAI_PARTS.values(), *(entry.name for entry in get_registry().entries("modalities"))}
            found = f"this model has no {modality} input" if modality in known else f"{kind!r} is not a part type"
            raise _refuse(f"{at}.type", f"{at}.type: {found}; this model takes: {', '.join(part_types(self.inputs))}.")
        spec, payload, at = self.inputs[modality], part.get(kind), f"{at}.{kind}"
        if kind == "input_audio":
            if not isinstance(payload, dict):
                raise _refuse(at, f"{at} must be an object {{'data': '<base64>', 'format': 'wav'}}.")
            return self.encoded(at, spec, payload)
        if isinstance(payload, str):  # some clients send {"image_url": "data:..."}
            return self.url(at, spec, payload)
        if not isinstance(payload, dict):
            shape = "{'url': ...}" if kind in OPENAI_PARTS else "{'data': '<base64>', 'format': ...} or {'url': ...}"
            raise _refuse(at, f"{at} must be an object {shape}; got {_shape(payload)}.")
        if "data" in payload and "url" in payload:
            raise _refuse(at, f"{at} has both 'data' and 'url'; give one.")
        if kind not in OPENAI_PARTS and "url" not in payload:
            return self.encoded(at, spec, payload)
        if not isinstance(payload.get("url"), str):
            raise _refuse(f"{at}.url", f"{at}.url must be a string: a data:, file:// or http(s) URL, or a path.")
        return self.url(f"{at}.url", spec, payload["url"])

    def encoded(self, at: str, spec: ModalitySpec, payload: dict) -> dict:
        """``{"data": base64, "format": "wav"}``: the format must be a suffix the modality's loaders read."""
        form = payload.get("format")
        suffix = "." + form.lower().lstrip(".") if isinstance(form, str) else None
        if not _reads(spec, suffix):
            formats = ", ".join(s[1:] for s in _suffixes(spec))
            raise _refuse(f"{at}.format", f"{at}.format is {form!r}; {spec.name} data comes in formats: {formats}.")
        return self.item(f"{at}.data", spec, self.decode(f"{at}.data", payload.get("data")), suffix)

    def url(self, at: str, spec: ModalitySpec, url: str) -> dict:
        if url[:5].lower() == "data:":
            return self.data_url(at, spec, url)
        parsed = urllib.parse.urlsplit(url) if "://" in url else None
        scheme = parsed.scheme.lower() if parsed else ""
        if scheme in ("http", "https"):
            return self.remote(at, spec, url)
        if scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise _refuse(at, f"{at}: a file:// URL names a file on this machine; drop the host {parsed.netloc!r}.")
            return self.local(at, spec, urllib.request.url2pathname(parsed.path))
        if scheme:
            raise _refuse(at, f"{at} has URL scheme {scheme!r}; send a data:, http(s) or file:// URL, or a path.")
        return self.local(at, spec, url)

    def data_url(self, at: str, spec: ModalitySpec, url: str) -> dict:
        header, comma, data = url[5:].partition(",")
        fields = [field.strip().lower() for field in header.split(";")]
        mime, mimes = fields[0], _mimes(spec)
        if not comma or "base64" not in fields[1:]:
            example = mimes.split(",")[0]
            raise _refuse(at, f"{at} is a data URL without ';base64,'; send data:{example};base64,<base64 bytes>.")
        if mime in UNTYPED:
            decoded = self.decode(at, data)
            if not _reads(spec, suffix := sniff(decoded)):
                raise _refuse(at, f"{at} is an untyped data URL of no {spec.name} format; give its type: {mimes}.")
            return self.item(at, spec, decoded, suffix)
        known = [MIME_SUFFIXES[mime]] if mime in MIME_SUFFIXES else []
        suffix = next((s for s in known + mimetypes.guess_all_extensions(mime, strict=False) if _reads(spec, s)), None)
        if suffix is None:
            raise _refuse(at, f"{at} is a data URL of type {mime!r}, which {spec.name} does not take; send: {mimes}.")
        return self.item(at, spec, self.decode(at, data), suffix)

    def decode(self, at: str, data: Any) -> bytes:
        """Base64 -> bytes, its length checked before decoding and its size after."""
        if not isinstance(data, str):
            raise _refuse(at, f"{at} must be a base64 string; got {_shape(data)}.")
        limit = self.policy.max_item_bytes
        encoded = 4 * -(-limit // 3)
        if len(data) > encoded + encoded // 64 + 4:  # room for a line break every 64 characters
            raise self.too_large(at, f"{len(data):,} base64 characters (over {limit:,} bytes decoded)")
        if any(space in data for space in " \n\r\t"):
            data = "".join(data.split())
        try:
            decoded = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _refuse(
                at,
                f"{at} is not valid base64 ({exc}); encode the file's bytes with standard base64 (A-Z, a-z, 0-9, "
                "+ and /, with '=' padding).",
                "invalid_base64",
            ) from None
        if len(decoded) > limit:
            raise self.too_large(at, f"{len(decoded):,} bytes")
        if not decoded:
            raise _refuse(at, f"{at} holds no bytes; send the file's contents.")
        return decoded

    def too_large(self, at: str, found: str) -> APIError:
        return _refuse(
            at,
            f"{at} holds {found}, over the limit of {self.policy.max_item_bytes:,} bytes for one item; send a smaller "
            "file (resize or compress it).",
            "item_too_large",
        )

    def off(self, at: str, spec: ModalitySpec, refusal: str, flag: str, code: str) -> APIError:
        message = f"{at}: this server {refusal}; send the {spec.name} as a base64 data: URL, or start it with {flag}."
        return _refuse(at, message, code)

    def remote(self, at: str, spec: ModalitySpec, url: str) -> dict:
        if not self.policy.allow_remote:
            raise self.off(at, spec, "downloads no http(s) URLs", "--allow-remote-media", "remote_media_off")
        limit, deadline = self.policy.max_item_bytes, self.policy.remote_timeout
        try:
            data = read_url(url, f"The {spec.name} URL", limit=limit, deadline=deadline, error=InputError)
        except InputError as exc:
            raise _refuse(at, f"{at}: {exc}") from None
        suffix = Path(urllib.parse.urlsplit(url).path).suffix.lower()
        if not _reads(spec, suffix := suffix if _reads(spec, suffix) else sniff(data)):
            raise _refuse(at, f"{at}: the download is in no {spec.name} format ({', '.join(_suffixes(spec))}).")
        return self.item(at, spec, data, suffix)

    def local(self, at: str, spec: ModalitySpec, name: str) -> dict:
        """A path (a relative one is under the allowed folder) that resolves, symlinks followed, inside that folder."""
        if self.policy.allowed_dir is None:
            flag = "--allowed-media-dir DIR (and send a path under DIR)"
            raise self.off(at, spec, "reads no local files", flag, "path_not_allowed")
        root = Path(self.policy.allowed_dir).resolve()
        try:
            path = (root / name).resolve()
        except (OSError, ValueError, RuntimeError):  # a NUL byte, a name too long, a symlink loop
            path = None
        if path is None or not path.is_relative_to(root):
            raise _refuse(
                at,
                f"{at}: {name!r} is outside the folder this server reads media from ({str(root)!r}) once symlinks "
                "are resolved; send a path inside it, or the file as a base64 data: URL.",
                "path_not_allowed",
            )
        if not _reads(spec, suffix := path.suffix.lower()):
            raise _refuse(at, f"{at}: {spec.name} files have suffixes {', '.join(_suffixes(spec))}; got {name!r}.")
        try:
            data = read_bytes(path, f"The {spec.name} file", limit=self.policy.max_item_bytes, error=InputError)
        except InputError as exc:
            raise _refuse(at, f"{at}: {exc}") from None
        return self.item(at, spec, data, suffix)

    def item(self, at: str, spec: ModalitySpec, data: bytes, suffix: str) -> dict:
        """Write the bytes to ``scratch/<n><suffix>``, check the header's pixel counts, read it once with the loader."""
        path = self.scratch / f"{self.written}{suffix}"
        self.written += 1
        with open(path, "xb") as handle:
            handle.write(data)
        what = f"{spec.name}/{suffix[1:]}"
        try:
            if suffix in IMAGE_SUFFIXES:
                self.check_image(at, path)
            if suffix in VIDEO_SUFFIXES_AV:
                self.check_video(at, path)
            spec.load(path)
        except APIError:
            raise
        except MMLLMError as exc:  # a loader's InputError: its message, naming the JSON path instead of the file
            message = str(exc).replace(repr(str(path)), at).replace(str(path), at)
            message = message if len(message) <= MESSAGE_LENGTH else message[: MESSAGE_LENGTH - 1] + "…"
            raise _refuse(at, message, "invalid_media") from exc
        except Exception as exc:  # a decoder's own error (PIL, PyAV): named, never echoed
            raise _refuse(
                at,
                f"{at} could not be decoded as {what} ({type(exc).__name__}); send a valid, complete {what} file.",
                "invalid_media",
            ) from exc
        return {"type": spec.name, "path": str(path)}

    def check_image(self, at: str, path: Path) -> None:
        """Refuse an image of more than ``max_pixels`` from its header, before any pixel is decoded."""
        from PIL import Image

        limit = self.policy.max_pixels
        try:
            with Image.open(path) as image:  # reads the header only
                width, height = image.size
        except Image.DecompressionBombError:  # over twice PIL's own limit, which PIL refuses from the header
            found = f"over {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels"
        else:
            if width * height <= limit:
                return
            found = f"{width} x {height} = {width * height:,} pixels"
        raise _refuse(at, f"{at} is an image of {found}, over the limit of {limit:,}; resize it.", "too_many_pixels")

    def check_video(self, at: str, path: Path) -> None:
        """Refuse a video whose frames hold over ``max_pixels``, or whose declared frames x pixels are over
        ``max_video_pixels``, from its header; the loader bounds what a lying header hides (MAX_VIDEO_PIXELS)."""
        try:
            import av
        except ImportError:
            return  # the loader says how to install it
        with av.open(str(path)) as container:
            stream = container.streams.video[0]  # none: an IndexError, "could not be decoded as video/..."
            width, height, frames = stream.codec_context.width, stream.codec_context.height, stream.frames
            if not frames and stream.duration and stream.time_base and stream.average_rate:
                frames = round(float(stream.duration * stream.time_base * stream.average_rate))
        if width * height > self.policy.max_pixels:
            found, limit = f"frames of {width} x {height}", f"{self.policy.max_pixels:,} pixels a frame"
        elif frames * width * height > self.policy.max_video_pixels:
            found, limit = f"{frames:,} frames of {width} x {height}", f"{self.policy.max_video_pixels:,} pixels"
        else:
            return
        message = f"{at} is a video of {found}, over the limit of {limit}; send a shorter clip or lower its resolution."
        raise _refuse(at, message, "too_many_pixels")
