"""Cheap image-file checks made while loading: which files are images, which are damaged.

Decoding millions of images at load time would cost as much as the inference itself, so the
loader only reads a file's first and last bytes: the magic number says what the file is, and the
end-of-image marker (JPEG ``FFD9``, PNG ``IEND``) or the container's size field (BMP, WebP)
tells a truncated download from a complete one. Anything that fails is still loaded, but tagged,
so that inference skips it and the user can find it.

The image's dimensions are read from its header too (PNG ``IHDR``, a JPEG's frame header, BMP's
info header, WebP's frame header; nothing is decoded): a small file can declare a huge image (a
decompression bomb: 875 KB of PNG that decodes to 30,000 x 30,000 pixels, 2.7 GB of RGB), so an
image over :data:`DEFAULT_MAX_PIXELS` (adjustable) is tagged at load and refused by the decoder.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable

#: File name extensions treated as images when walking folders (lower case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"
_TAIL_BYTES = 64  # some writers pad JPEGs after the EOI marker
_HEAD_BYTES = 32  # enough for the PNG, BMP and WebP headers' dimensions

#: The largest image (width x height) loaded and decoded by default: 40 megapixels, far above
#: any face crop, and 120 MB once decoded to RGB. ``--max-pixels`` changes it.
DEFAULT_MAX_PIXELS = 40_000_000

#: The smallest side (pixels) and the largest ratio of the long side to the short one that an
#: image may have to be labelled as a face: a 1 x 1 dot or a 10,000 x 10 strip holds no face, and
#: a model would still give it confident labels. Such images are tagged ``unreadable`` at load
#: ("too small for a face", "not shaped like a face") and refused by the decoder.
MIN_FACE_SIDE = 16
MAX_FACE_ASPECT = 4.0


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


def image_problem(head: bytes, tail: bytes, size: int, read: Reader | None = None) -> str | None:
    """Why an image file whose first bytes are ``head``, last bytes ``tail`` and size ``size``
    cannot be used, or None if it looks complete. With ``read`` (the whole file), a JPEG whose
    end marker is not in ``tail`` is searched for one after its scan data: bytes after the end
    marker (padding, a camera's trailer) are accepted."""
    if size == 0:
        return "empty file"
    fmt = sniff_format(head)
    if fmt is None:
        return "not a JPEG, PNG, BMP or WebP image"
    if fmt == "jpeg" and b"\xff\xd9" not in tail and not (read is not None and _jpeg_scan_ends(read, size)):
        return "truncated JPEG (no end-of-image marker)"
    if fmt == "png" and _PNG_IEND not in tail:
        return "truncated PNG (no IEND chunk)"
    if fmt == "bmp" and len(head) >= 6 and struct.unpack("<I", head[2:6])[0] > size:
        return "truncated BMP (file shorter than its header says)"
    if fmt == "webp" and len(head) >= 8 and struct.unpack("<I", head[4:8])[0] + 8 > size:
        return "truncated WebP (file shorter than its header says)"
    return None


def file_digest(path: str) -> str | None:
    """A content hash of the file at ``path`` (BLAKE2b, 128 bits, hex), or None when it cannot be
    read: identical files under two names, identities or sources have the same one. One read of
    the file, far cheaper than decoding it."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def check_image_file(path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> str | None:
    """Read the first and last bytes of ``path`` (and, for JPEG, its segment headers) and
    return what is wrong with it, or None. ``max_pixels`` None: no pixel limit."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
            size = os.fstat(f.fileno()).st_size
            if size > _TAIL_BYTES:
                f.seek(size - _TAIL_BYTES)
            else:
                f.seek(0)
            tail = f.read(_TAIL_BYTES)
            read = _file_reader(f)
            problem = image_problem(head, tail, size, read)
            if problem is None:
                problem = shape_problem(oriented_size(read), max_pixels)
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return problem


# ----------------------------------------------------------------------------- dimensions

Reader = Callable[[int, int], bytes]  # read(offset, n) -> at most n bytes from offset


def _file_reader(f) -> Reader:
    def read(offset: int, n: int) -> bytes:
        f.seek(offset)
        return f.read(n)
    return read


def buffer_reader(data) -> Reader:
    """A :data:`Reader` over bytes or anything with the buffer protocol (a numpy array)."""
    view = memoryview(data).cast("B")
    return lambda offset, n: bytes(view[offset:offset + n])


def image_size(read: Reader) -> tuple[int, int] | None:
    """``(width, height)`` as the image's header declares it, or None when the header does not
    say (an unknown format, a damaged header). Reads a few bytes; decodes nothing."""
    head = read(0, _HEAD_BYTES)
    fmt = sniff_format(head)
    if fmt == "jpeg":
        return _jpeg_size(read)
    if len(head) < 30:
        return None
    if fmt == "png" and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    if fmt == "bmp":
        if struct.unpack("<I", head[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
            return struct.unpack("<HH", head[18:22])
        width, height = struct.unpack("<ii", head[18:26])
        return abs(width), abs(height)  # a negative height means top-down rows
    if fmt == "webp":
        return _webp_size(head)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    kind = head[12:16]
    if kind == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L" and head[20] == 0x2F:
        bits = struct.unpack("<I", head[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


_JPEG_STANDALONE = {0x01, 0xD8, *range(0xD0, 0xD8)}  # markers without a length field
_JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (DHT, JPG, DAC are not)


def _jpeg_size(read: Reader) -> tuple[int, int] | None:
    """Walk a JPEG's segment headers (skipping their bodies) to its frame header."""
    pos = 2
    for _ in range(10_000):  # a real JPEG has a few dozen segments before its frame header
        marker = read(pos, 4)
        if len(marker) < 4 or marker[0] != 0xFF:
            return None
        if marker[1] == 0xFF:  # fill byte
            pos += 1
        elif marker[1] in _JPEG_STANDALONE:
            pos += 2
        elif marker[1] in _JPEG_SOF:
            frame = read(pos + 5, 4)
            if len(frame) < 4:
                return None
            height, width = struct.unpack(">HH", frame)
            return width, height
        elif marker[1] in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        else:
            pos += 2 + int.from_bytes(marker[2:4], "big")
    return None


def _jpeg_segments(read: Reader):
    """``(marker, offset of the segment's body, body length)`` of a JPEG's header segments, up
    to and including the first start-of-scan (``0xDA``); stops at anything malformed."""
    pos = 2
    for _ in range(10_000):
        marker = read(pos, 4)
        if len(marker) < 4 or marker[0] != 0xFF:
            return
        if marker[1] == 0xFF:
            pos += 1
            continue
        if marker[1] in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker[1] == 0xD9:
            return
        length = int.from_bytes(marker[2:4], "big")
        yield marker[1], pos + 4, length - 2
        if marker[1] == 0xDA:
            return
        pos += 2 + length


def _jpeg_scan_ends(read: Reader, size: int) -> bool:
    """True if an end-of-image marker follows the JPEG's first scan: the image is complete and
    what follows the marker is a trailer. Reads the file from the scan on (only for JPEGs whose
    last bytes hold no end marker: rare). Markers before the scan (an EXIF thumbnail's) do not
    count."""
    scan_start = None
    for marker, body, length in _jpeg_segments(read):
        if marker == 0xDA:
            scan_start = body + length
    if scan_start is None:
        return False
    chunk, pos = 1 << 20, scan_start
    while pos < size:
        data = read(pos, chunk + 1)
        if b"\xff\xd9" in data:
            return True
        pos += chunk
    return False


# ----------------------------------------------------------------------------- orientation

#: EXIF ``Orientation`` values whose display swaps width and height (rotations by 90 degrees)
_TRANSPOSED = frozenset({5, 6, 7, 8})


def jpeg_orientation(read: Reader) -> int:
    """The EXIF ``Orientation`` (1 to 8) of a JPEG's APP1 segment; 1 (upright) when there is
    none, it is damaged, or the file is not a JPEG. Reads a few header bytes."""
    if read(0, 3) != b"\xff\xd8\xff":
        return 1
    for marker, body, length in _jpeg_segments(read):
        if marker == 0xE1 and length >= 14:
            exif = read(body, min(length, 1 << 16))
            if exif[:6] == b"Exif\x00\x00":
                return _tiff_orientation(exif[6:])
        elif marker in _JPEG_SOF or marker == 0xDA:
            break
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = struct.unpack(order + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        return 1
    for k in range(struct.unpack(order + "H", tiff[ifd:ifd + 2])[0]):
        entry = tiff[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag == 0x0112 and kind == 3:  # Orientation, SHORT
            value = struct.unpack(order + "H", entry[8:10])[0]
            return value if 1 <= value <= 8 else 1
    return 1


def oriented_size(read: Reader) -> tuple[int, int] | None:
    """:func:`image_size` as a viewer shows the image: width and height swapped when the EXIF
    orientation turns it by 90 degrees."""
    size = image_size(read)
    if size is not None and jpeg_orientation(read) in _TRANSPOSED:
        return size[1], size[0]
    return size


def shape_problem(size: tuple[int, int] | None, max_pixels: int | None) -> str | None:
    """:func:`pixels_problem` (when ``max_pixels`` is not None), then whether an image of
    ``size`` can hold a face (:data:`MIN_FACE_SIDE`, :data:`MAX_FACE_ASPECT`), or None."""
    problem = None if max_pixels is None else pixels_problem(size, max_pixels)
    if problem is not None or size is None or 0 in size:
        return problem
    width, height = size
    if min(width, height) < MIN_FACE_SIDE:
        return f"too small for a face: {width} x {height} pixels (at least {MIN_FACE_SIDE} a side)"
    if max(width, height) > MAX_FACE_ASPECT * min(width, height):
        return (f"not shaped like a face: {width} x {height} pixels (one side over "
                f"{MAX_FACE_ASPECT:g} times the other)")
    return None


def pixels_problem(size: tuple[int, int] | None, max_pixels: int) -> str | None:
    """Why an image of ``size`` (width, height) is refused under ``max_pixels``, or None."""
    if size is None:
        return None
    width, height = size
    if width == 0 or height == 0:
        return f"image without pixels: {width} x {height}"
    if width * height > max_pixels:
        return (f"too many pixels: {width} x {height} = {width * height:,}, over the limit of "
                f"{max_pixels:,} (--max-pixels)")
    return None
