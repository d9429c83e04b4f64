"""CheXpert-style labels, read once for every dataset labelled by the CheXpert labeler (CheXpert,
MIMIC-CXR): one column per observation, ``1`` positive, ``0`` negative, ``-1`` uncertain, blank not
mentioned, and a ``No Finding`` column.

The label policy decides what the uncertain and the blank cells become, and is recorded in the
manifest (``label_policy``) so a cache says how it was labelled:

- the No Finding convention (``data.label_no_finding``): on a row whose ``No Finding`` is 1, a blank
  is a negative (``negative``, the field's default, as torchxrayvision reads both datasets), or stays
  unknown (``unknown``). Only blanks: a 1 or a -1 on such a row keeps its meaning. The classes a
  format spares (CheXpert: ``Support Devices``, which the labeler's No Finding does not cover) keep
  their blank unknown. ``all-negative`` reads such a row as negative for every class it does not
  spare, a 1 or -1 included: torchxrayvision's MIMIC reading, which turns a device on a No Finding
  study into a negative (offered to compare like with like; not the default);
- uncertainty (``data.label_uncertain``, and per class ``data.label_uncertain_per_class``): ``-1``
  becomes unknown (NaN, left out of the loss and the scores: the default), positive (U-Ones) or
  negative (U-Zeros).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hegl_cli.config import DataConfig
from hegl_cli.data.formats.registry import FormatRead
from hegl_cli.data.pathologies import canonical
from hegl_cli.errors import UserError

NO_FINDING = "No Finding"
# The CheXpert labeler's 14 observations, as the CSVs spell and order them; No Finding is no class.
OBSERVATIONS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)
CLASSES: tuple[str, ...] = tuple(c for c in OBSERVATIONS if c != NO_FINDING)
POLICIES = ("unknown", "ones", "zeros")
POSITIVE, NEGATIVE, UNCERTAIN, BLANK = "1", "0", "-1", ""
CELLS = {"1": POSITIVE, "1.0": POSITIVE, "0": NEGATIVE, "0.0": NEGATIVE, "-1": UNCERTAIN, "-1.0": UNCERTAIN,
         "": BLANK}
SETTINGS = ("label_no_finding", "label_uncertain", "label_uncertain_per_class")


@dataclass(frozen=True)
class LabelPolicy:
    """What a CheXpert-style cell becomes: ``no_finding`` (negative | unknown) for a blank on a No Finding
    row, except on ``spares``; ``uncertain`` (unknown | ones | zeros) for -1, by class."""

    no_finding: str = "negative"
    spares: frozenset[str] = frozenset()
    uncertain: str = "unknown"
    per_class: Mapping[str, str] = field(default_factory=dict)  # dataset class -> policy
    given_per_class: Mapping[str, str] = field(default_factory=dict)  # as the config said it

    def uncertain_of(self, name: str) -> str:
        return self.per_class.get(name, self.uncertain)

    def record(self, classes: tuple[str, ...]) -> dict[str, Any]:
        """The manifest's ``label_policy``: the settings as given and what each class's -1 became."""
        return {"no_finding": self.no_finding, "no_finding_spares": sorted(canonical(c) for c in self.spares),
                "uncertain": self.uncertain, "uncertain_per_class": dict(self.given_per_class),
                "uncertain_by_class": {canonical(c): self.uncertain_of(c) for c in classes}}


def recorded(found: FormatRead, policy: LabelPolicy, classes: tuple[str, ...]) -> FormatRead:
    """``found`` with its label policy in the cache's identity and manifest (``label_policy``)."""
    record = policy.record(classes)
    found.where.append(record)
    found.manifest = {**(found.manifest or {}), "label_policy": record}
    return found


def label_policy(data: DataConfig, classes: tuple[str, ...], spares: tuple[str, ...] = ()) -> LabelPolicy:
    """The policy of the ``data.label_*`` keys for a format of ``classes``; a per-class key that names no
    class of the format, or a policy that is none, is one line naming the key."""
    per_class: dict[str, str] = {}
    by_canonical = {canonical(c): c for c in classes}
    given = data.label_uncertain_per_class
    for name, value in given.items():
        if canonical(str(name)) not in by_canonical:
            raise UserError(f"config key 'data.label_uncertain_per_class': {name!r} is not a class of this "
                            f"dataset (classes: {', '.join(classes)})")
        if value not in POLICIES:
            raise UserError(f"config key 'data.label_uncertain_per_class': {name!r} -> {value!r}; each class "
                            f"takes one of {', '.join(POLICIES)}")
        per_class[by_canonical[canonical(str(name))]] = value
    return LabelPolicy(no_finding=data.label_no_finding, spares=frozenset(spares), uncertain=data.label_uncertain,
                       per_class=per_class, given_per_class=dict(given))


def row_labels(row: Mapping[str, str], columns: tuple[str, ...], policy: LabelPolicy) -> tuple[set[str], set[str]]:
    """(positive classes, unknown classes) of one row under ``policy``, over the class ``columns`` the
    table has; ValueError naming the column for a cell that is not 1, 0, -1 or blank."""
    cells = {}
    for column in (NO_FINDING, *columns):
        text = row.get(column, "").strip()
        cell = CELLS.get(text)
        if cell is None:
            raise ValueError(f"column {column!r} holds {text!r}, not 1, 0, -1 or blank")
        cells[column] = cell
    healthy = cells[NO_FINDING] == POSITIVE and policy.no_finding in ("negative", "all-negative")
    overrides = cells[NO_FINDING] == POSITIVE and policy.no_finding == "all-negative"
    positive, unknown = set(), set()
    for column in columns:
        cell = cells[column]
        if overrides and column not in policy.spares:
            cell = NEGATIVE
        elif cell == UNCERTAIN:
            cell = {"ones": POSITIVE, "zeros": NEGATIVE}.get(policy.uncertain_of(column), BLANK)
        elif cell == BLANK and healthy and column not in policy.spares:
            cell = NEGATIVE
        if cell == POSITIVE:
            positive.add(column)
        elif cell == BLANK:
            unknown.add(column)
    return positive, unknown


class Interned:
    """One object per distinct value (sets of classes, metadata strings): the records of a 224k-row table
    share a few hundred label sets instead of holding one each."""

    def __init__(self) -> None:
        self.seen: dict = {}

    def __call__(self, value):
        return self.seen.setdefault(value, value)


def settings_of(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The ``data.label_*`` keys a CheXpert-style cache was prepared with (its manifest's ``label_policy``)."""
    recorded = manifest.get("label_policy")
    if not isinstance(recorded, Mapping):
        return {}
    return {"label_no_finding": recorded.get("no_finding"), "label_uncertain": recorded.get("uncertain"),
            "label_uncertain_per_class": dict(recorded.get("uncertain_per_class") or {})}
