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
