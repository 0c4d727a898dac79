"""Builders of small on-disk face datasets in the layouts the loaders read, from real faces."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from faceaudit.demo import lfw_faces


@dataclass
class FaceImages:
    """Real face crops; ``jpeg(i)`` encodes face ``i`` (cycling) as JPEG bytes."""

    arrays: np.ndarray

    @classmethod
    def load(cls) -> FaceImages:
        return cls(lfw_faces())

    def jpeg(self, i: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(self.arrays[i % len(self.arrays)]).save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    def png(self, i: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(self.arrays[i % len(self.arrays)]).save(buf, format="PNG")
        return buf.getvalue()

    def write(self, path: Path, i: int) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.png(i) if path.suffix == ".png" else self.jpeg(i))
        return path

    def identity_tree(self, root: Path, layout: dict[str, int], start: int = 0, ext: str = ".jpg") -> int:
        """``root/<identity>/<k>.jpg`` for ``{identity: n_images}``; returns the image count."""
        i = start
        for identity, n in layout.items():
            for k in range(n):
                self.write(root / identity / f"{k:04d}{ext}", i)
                i += 1
        return i - start


def marked_faces(faces: FaceImages, root: Path, n: int, per_identity: int = 4) -> list[list[str]]:
    """``n`` real faces in identity folders, with a learnable rule planted in them.

    ``Male`` is positive iff a white square sits in the top-left corner, ``Smiling`` iff a black
    square sits in the bottom-right corner (independently); every other attribute is unknown (0).
    Returns MAAD-Face CSV rows (``Filename``, ``Identity``, 47 values).
    """
    from faceaudit.attributes import ATTRIBUTES

    rng = np.random.default_rng(7)
    male_col, smile_col = ATTRIBUTES.index("Male"), ATTRIBUTES.index("Smiling")
    rows = []
    for i in range(n):
        image = faces.arrays[i % len(faces.arrays)].copy()
        if i >= len(faces.arrays):
            image = image[:, ::-1].copy()  # mirrored copies make more distinct images
        male, smiling = bool(rng.integers(2)), bool(rng.integers(2))
        if male:
            image[4:36, 4:36] = 255
        if smiling:
            image[-36:-4, -36:-4] = 0
        identity = f"id{i // per_identity:04d}"
        name = f"{identity}/{i:05d}.jpg"
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, quality=92)
        values = ["0"] * len(ATTRIBUTES)
        values[male_col] = "1" if male else "-1"
        values[smile_col] = "1" if smiling else "-1"
        rows.append([name, identity, *values])
    return rows
