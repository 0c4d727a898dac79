"""Cheap image-file checks made while loading: which files are images, which are damaged.

Decoding millions of images at load time would cost as much as the inference itself, so the
loader only reads a file's first and last bytes: the magic number says what the file is, and the
end-of-image marker (JPEG ``FFD9``, PNG ``IEND``) or the container's size field (BMP, WebP)
tells a truncated download from a complete one. Anything that fails is still loaded, but tagged,
so that inference skips it and the user can find it.
"""

from __future__ import annotations

import os
import struct

#: File name extensions treated as images when walking folders (lower case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"
_TAIL_BYTES = 64  # some writers pad JPEGs after the EOI marker


def is_image_name(name: str) -> bool:
    """True if ``name`` has one of the image extensions (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def sniff_format(head: bytes) -> str | None:
    """The image format that ``head`` (a file's first bytes) starts with, or None."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == _PNG_MAGIC:
        return "png"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def image_problem(head: bytes, tail: bytes, size: int) -> str | None:
    """Why an image file whose first bytes are ``head``, last bytes ``tail`` and size ``size``
    cannot be used, or None if it looks complete."""
    if size == 0:
        return "empty file"
    fmt = sniff_format(head)
    if fmt is None:
        return "not a JPEG, PNG, BMP or WebP image"
    if fmt == "jpeg" and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)"
    if fmt == "png" and _PNG_IEND not in tail:
        return "truncated PNG (no IEND chunk)"
    if fmt == "bmp" and len(head) >= 6 and struct.unpack("<I", head[2:6])[0] > size:
        return "truncated BMP (file shorter than its header says)"
    if fmt == "webp" and len(head) >= 8 and struct.unpack("<I", head[4:8])[0] + 8 > size:
        return "truncated WebP (file shorter than its header says)"
    return None


def check_image_file(path: str) -> str | None:
    """Read the first and last bytes of ``path`` and return what is wrong with it, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = os.fstat(f.fileno()).st_size
            if size > _TAIL_BYTES:
                f.seek(size - _TAIL_BYTES)
            else:
                f.seek(0)
            tail = f.read(_TAIL_BYTES)
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return image_problem(head, tail, size)
