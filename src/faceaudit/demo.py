"""Real face images for the demo and the tests, from scikit-image's bundled data (offline).

scikit-image ships 100 real LFW faces (25x25 grayscale crops) and the public-domain astronaut
portrait. The demo writes them as JPEGs at the usual 112x112 face-recognition crop size.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

#: (source, domain) of each folder that :func:`write_demo_faces` returns, in order. No synthetic
#: face set installs offline, so the demo's "synthetic" source is a stand-in: the same real faces
#: mirrored and darkened, which is enough to run the whole pipeline end to end.
DEMO_SOURCES = (("lfw-demo", "real"), ("lfw-altered-demo", "synthetic"))
FACE_SIZE = 112


def lfw_faces() -> np.ndarray:
    """The 100 LFW face crops of ``skimage.data.lfw_subset()`` as uint8 RGB, 112x112."""
    from skimage.data import lfw_subset

    faces = lfw_subset()[:100]  # the first 100 are faces, the rest are not
    return np.stack([to_rgb_crop(f) for f in faces])


def astronaut_face() -> np.ndarray:
    """The face region of ``skimage.data.astronaut()`` as uint8 RGB, 112x112.

    A square crop with the hair and a margin: the earlier 200x180 crop was cut tight and stretched
    to a square, and the age/gender models read that distorted face as male."""
    from skimage.data import astronaut

    return to_rgb_crop(astronaut()[10:290, 90:370])


def to_rgb_crop(image: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """Any grey/RGB, float/uint8 image as a ``size`` x ``size`` uint8 RGB array."""
    if image.dtype != np.uint8:
        image = np.clip(np.asarray(image, dtype=np.float64) * (255.0 if image.max() <= 1.0 else 1.0), 0, 255)
        image = image.astype(np.uint8)
    pil = Image.fromarray(image).convert("RGB").resize((size, size), Image.BICUBIC)
    return np.asarray(pil)


def write_demo_faces(directory: str) -> list[str]:
    """Write the demo faces as identity folders of JPEGs (``<source>/<identity>/<image>``, one
    image per identity); returns the folders, one per demo source. The stand-in synthetic identity
    ``lfw_007`` is the real identity ``lfw_007`` mirrored and darkened: a synthetic set that copies
    real people, which the identity audit's leakage finds (the privacy failure it exists for)."""
    real = os.path.join(os.path.abspath(directory), "lfw-demo")
    altered = os.path.join(os.path.abspath(directory), "lfw-altered-demo")
    faces = lfw_faces()
    _write_all(real, {f"lfw_{i:03d}/lfw_{i:03d}.jpg": f for i, f in enumerate(faces)}
               | {"astronaut/astronaut.jpg": astronaut_face()})
    darker = (faces[:, :, ::-1].astype(np.float32) * 0.75).astype(np.uint8)  # mirrored, darker
    _write_all(altered, {f"lfw_{i:03d}/altered_{i:03d}.jpg": f for i, f in enumerate(darker)})
    return [real, altered]


def _write_all(folder: str, images: dict[str, np.ndarray]) -> None:
    os.makedirs(folder, exist_ok=True)
    for name, image in images.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            Image.fromarray(image).save(path, quality=95)


DEMO_OUTLIERS = 10


def default_demo_dir() -> str:
    """Where the demo writes its images and report unless told: one fixed place per user
    (``$FACEAUDIT_CACHE_DIR/demo``, else ``~/.cache/faceaudit/demo``), so that ``faceaudit run``
    works from any working folder (a dataset's source keeps the folder it was loaded from)."""
    from .model.download import cache_dir

    return os.path.join(cache_dir(), "demo")


def demo_config(directory: str | None = None, dataset: str = "faces"):
    """The demo as a study config: the demo faces written to ``directory`` (default:
    :func:`default_demo_dir`), labelled with the offline age/gender models, embedded with dlib's
    offline face-recognition ResNet and audited for identity leakage, the 10 synthetic faces real data explains least tagged, an
    HTML report at ``directory/report.html``."""
    from .config import EmbeddingConfig, IdentityConfig, ModelConfig, OutliersConfig, ReportsConfig, SourceConfig, StudyConfig

    directory = default_demo_dir() if directory is None else directory
    folders = write_demo_faces(directory)
    sources = tuple(SourceConfig(folder, source, domain, "folders")
                    for folder, (source, domain) in zip(folders, DEMO_SOURCES))
    return StudyConfig(dataset, sources, model=ModelConfig("agegender", device="cpu", batch_size=32, workers=0),
                       outliers=OutliersConfig(top=DEMO_OUTLIERS),
                       reports=ReportsConfig(html=os.path.join(os.path.abspath(directory), "report.html")),
                       embedding=EmbeddingConfig("dlib", device="cpu", batch_size=32, workers=0),
                       identity=IdentityConfig(fmr=0.01, tag=True))  # dlib's default suits big faces, not these crops
