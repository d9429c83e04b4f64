"""One pathology namespace: every dataset's label names mapped onto canonical names.

Each importer names its classes by :func:`canonical`; the manifest keeps every class's original
name (``original_names``), and ``data.class_map`` merges or renames classes after that. Matching is
by canonical name, so a model trained on NIH can be scored on ChestX-Det or VinDr for the classes
they share. The table below is the documented synonym list (README, "One pathology namespace");
a name it does not know stays as written (with its case and spacing normalised).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# canonical name -> the names datasets use for it (compared without case, spaces, '_' or '-')
SYNONYMS: dict[str, tuple[str, ...]] = {
    "Aortic Enlargement": ("Aortic enlargement",),
    "Atelectasis": (),
    "Calcification": (),
    "Cardiomegaly": (),
    "Consolidation": (),
    "Diffuse Nodule": (),
    "Edema": ("Oedema", "Pulmonary edema"),
    "Effusion": ("Pleural effusion", "Pleural Effusion"),
    "Emphysema": (),
    "Enlarged Cardiomediastinum": (),
    "Fibrosis": ("Pulmonary fibrosis",),
    "Fracture": ("Rib fracture",),
    "Hernia": (),
    "ILD": ("Interstitial lung disease",),
    "Infiltration": ("Infiltrate", "Infiltrates"),
    "Lung Lesion": (),
    "Lung Opacity": ("Opacity",),
    "Mass": (),
    "No Finding": ("No finding", "Normal"),
    "Nodule": (),
    "Nodule/Mass": ("Nodule or mass",),  # VinDr's one class for both: not mapped onto either
    "Other Lesion": ("Other lesion",),
    "Pleural Thickening": ("Pleural_Thickening", "Pleural thickening"),
    "Pneumonia": (),
    "Pneumothorax": (),
    "Support Devices": ("Support devices",),
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name)).casefold()


_LOOKUP: dict[str, str] = {}
for _name, _others in SYNONYMS.items():
    for _synonym in (_name, *_others):
        _LOOKUP[_key(_synonym)] = _name


def canonical(name: str) -> str:
    """The canonical name of a label (``Pleural_Thickening`` -> ``Pleural Thickening``); an unknown
    name keeps its words, its surrounding spaces and repeated spaces dropped."""
    return _LOOKUP.get(_key(name), " ".join(str(name).split()))


def canonical_classes(names: list[str] | tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """(canonical names in order, canonical -> original) for one dataset's classes; two names that
    mean one class are an error in the dataset's definition (a bug, not the user's)."""
    mapped = [canonical(n) for n in names]
    if len(set(mapped)) != len(mapped):
        raise ValueError(f"classes {list(names)} name one class twice: {mapped}")
    return mapped, {c: o for c, o in zip(mapped, names)}


def same_class(a: str, b: str) -> bool:
    return canonical(a) == canonical(b)


@dataclass(frozen=True)
class ClassMatch:
    """How a model's classes meet a dataset's, by canonical name: the classes both have (in the model's
    order) and where each sits on either side; what only one of them has is not scored."""

    scored: tuple[str, ...]
    model_index: tuple[int, ...]
    data_index: tuple[int, ...]
    model_only: tuple[str, ...]
    data_only: tuple[str, ...]

    @property
    def identical(self) -> bool:
        return not self.model_only and not self.data_only and list(self.data_index) == sorted(self.data_index)


def match_classes(model_classes: list[str], data_classes: list[str]) -> ClassMatch:
    data_at = {canonical(c): i for i, c in enumerate(data_classes)}
    pairs = [(i, data_at[canonical(c)]) for i, c in enumerate(model_classes) if canonical(c) in data_at]
    taken = {d for _, d in pairs}
    return ClassMatch(scored=tuple(model_classes[i] for i, _ in pairs), model_index=tuple(i for i, _ in pairs),
                      data_index=tuple(d for _, d in pairs),
                      model_only=tuple(c for c in model_classes if canonical(c) not in data_at),
                      data_only=tuple(c for i, c in enumerate(data_classes) if i not in taken))
