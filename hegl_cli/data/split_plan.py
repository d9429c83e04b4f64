"""The dataset checked as a whole before anything is decoded, and its splits planned: each image in one
split, no patient in two (``data.patient_overlap``), val carved from train by patient."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hegl_cli.data.options import PrepareOptions
from hegl_cli.data.records import Record, SplitSource
from hegl_cli.data.splits import split_by_group
from hegl_cli.errors import UserError

HELD_OUT_ORDER = ("test", "val", "train")  # a patient in two splits goes to the first of these it is in



def image_identity(images: Path, file_name: str) -> tuple[int, int] | str:
    """What makes two listed images the same file: (device, inode) of the file a name resolves to, so
    a symbolic or hard link under another name is the same image; the normalised path when there is
    no file (decoding names it). Links are followed wherever they lead: the user made them (a source
    folder of links to another disk is common); only names in annotation files are held inside."""
    path = Path(images) / file_name
    try:
        info = path.stat()
    except (OSError, RuntimeError):
        return os.path.normpath(os.path.abspath(path))
    return info.st_dev, info.st_ino



def one_split_per_image(plan: list[tuple[str, SplitSource, list[Record]]], problems: list[str]
                        ) -> list[tuple[str, SplitSource, list[Record]]]:
    """Each image file in one split only (its first place, the others named), whatever the format and
    whatever name or link it is listed under."""
    seen: dict[tuple[int, int] | str, tuple[str, str]] = {}
    kept_plan = []
    for name, src, records in plan:
        kept = []
        for record in records:
            key = image_identity(src.images, record.file_name)
            if key in seen:
                first_split, first_name = seen[key]
                where = "again" if first_split == name else f"also in split '{first_split}'"
                alias = "" if first_name == record.file_name else f" (as {first_name})"
                problems.append(f"{src.name}: {record.file_name}: the same image is listed {where}{alias}; its "
                                "first place is kept")
                continue
            seen[key] = (name, record.file_name)
            kept.append(record)
        kept_plan.append((name, src, kept))
    return kept_plan



def one_split_per_patient(plan: list[tuple[str, SplitSource, list[Record]]], policy: str, problems: list[str]
                          ) -> list[tuple[str, SplitSource, list[Record]]]:
    """No patient in two splits, whatever the official lists say: ``move`` puts every image of such a
    patient into the most held-out of its splits (test, then val) and names the images moved;
    ``refuse`` stops with one line."""
    splits_of: dict[str, set[str]] = {}
    for name, _, records in plan:
        for record in records:
            if record.patient is not None:
                splits_of.setdefault(record.patient, set()).add(name)
    shared = {p: s for p, s in splits_of.items() if len(s) > 1}
    if not shared:
        return plan
    if policy == "refuse":
        patient, splits = sorted(shared.items())[0]
        raise UserError(f"patient {patient!r} has images in the splits {', '.join(sorted(splits))} "
                        f"({len(shared)} patient(s) in all); data.patient_overlap=refuse: fix the split lists, or "
                        "set data.patient_overlap=move")
    home = {p: next(n for n in [*HELD_OUT_ORDER, *sorted(s)] if n in s) for p, s in shared.items()}
    moved: dict[str, list[Record]] = {name: [] for name, _, _ in plan}
    kept_plan = []
    for name, src, records in plan:
        kept = []
        for record in records:
            target = home.get(record.patient) if record.patient is not None else None
            if target is not None and target != name:
                problems.append(f"{src.name}: {record.file_name}: patient {record.patient!r} is also in split "
                                f"'{target}'; moved there (data.patient_overlap=move)")
                moved[target].append(record)
                continue
            kept.append(record)
        kept_plan.append((name, src, kept))
    return [(name, src, records + moved[name]) for name, src, records in kept_plan]



def plan_splits(parsed: dict[str, tuple[SplitSource, list[Record]]], options: PrepareOptions, problems: list[str],
                twins: set[str]) -> list[tuple[str, SplitSource, list[Record]]]:
    """The splits to write: the named ones checked as a whole, then val carved from train by patient.

    ``twins``: splits that show other splits' images on purpose (the benchmark's counterfactual twin):
    left out of the checks and kept as they are.
    """
    plan = [(name, src, records) for name, (src, records) in parsed.items() if name not in twins]
    plan = one_split_per_patient(one_split_per_image(plan, problems), options.patient_overlap, problems)
    carved = []
    for name, src, records in plan:
        if name == "train" and "val" not in parsed and options.val_fraction > 0:
            train_records, val_records = split_by_group(records, options.val_fraction, options.seed)
            carved += [("train", src, train_records), ("val", src, val_records)]
        else:
            carved.append((name, src, records))
    return carved + [(name, src, records) for name, (src, records) in parsed.items() if name in twins]



def check_disjoint(partial: Path, splits: dict[str, SplitSource], twins: set[str]) -> None:
    """The invariant every cache keeps: no image file in two splits (twins aside). A violation is a bug."""
    owner: dict[str, str] = {}
    for name, src in splits.items():
        if name in twins:
            continue
        for file_name in json.loads((partial / name / "files.json").read_text()):
            key = os.path.normpath(os.path.abspath(src.images / file_name))
            if key in owner:
                raise RuntimeError(f"internal error: {file_name} is in the splits {owner[key]} and {name}")
            owner[key] = name
