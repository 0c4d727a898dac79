"""The 47 MAAD-Face attributes, in the column order of the MAAD-Face annotation file.

The order matters: it is the order of the columns of MAAD-Face's CSV, of the MAC's output
branches and of the characters of the compact per-sample state code.
"""

from __future__ import annotations

CATEGORIES: dict[str, tuple[str, ...]] = {
    "Demographics": ("Male", "Young", "Middle_Aged", "Senior", "Asian", "White", "Black"),
    "Skin": ("Rosy_Cheeks", "Shiny_Skin"),
    "Hair": (
        "Bald", "Wavy_Hair", "Receding_Hairline", "Bangs", "Sideburns",
        "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair",
    ),
    "Beard": ("No_Beard", "Mustache", "5_o_Clock_Shadow", "Goatee"),
    "Face geometry": (
        "Oval_Face", "Square_Face", "Round_Face", "Double_Chin", "High_Cheekbones",
        "Chubby", "Obstructed_Forehead", "Fully_Visible_Forehead",
    ),
    "Periocular": ("Brown_Eyes", "Bags_Under_Eyes", "Bushy_Eyebrows", "Arched_Eyebrows"),
    "Mouth": ("Mouth_Closed", "Smiling", "Big_Lips"),
    "Nose": ("Big_Nose", "Pointy_Nose"),
    "Accessories": (
        "Heavy_Makeup", "Wearing_Hat", "Wearing_Earrings", "Wearing_Necktie",
        "Wearing_Lipstick", "No_Eyewear", "Eyeglasses",
    ),
    "Other": ("Attractive",),
}

#: All 47 attributes in MAAD-Face column order.
ATTRIBUTES: tuple[str, ...] = tuple(a for attrs in CATEGORIES.values() for a in attrs)

#: attribute -> category
CATEGORY_OF: dict[str, str] = {a: c for c, attrs in CATEGORIES.items() for a in attrs}

assert len(ATTRIBUTES) == 47 and len(set(ATTRIBUTES)) == 47
