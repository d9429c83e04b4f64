"""What a reader's records keep on their way to the cache: the chosen classes (``data.classes``), their
canonical or mapped names (``data.class_map``) and the chosen views (``data.views``)."""

from __future__ import annotations

from hegl_cli.data.dicom import dicom_metadata
from hegl_cli.data.images import is_dicom
from hegl_cli.data.pathologies import canonical
from hegl_cli.data.records import Record, SplitSource, view_name
from hegl_cli.errors import UserError


def keep_classes(records: list[Record], classes: list[str]) -> list[Record]:
    """The records with only the findings and labels of ``classes`` (``data.classes``, a subset)."""
    wanted = set(classes)
    for record in records:
        record.findings = [f for f in record.findings if f.label in wanted]
        if record.image_labels is not None:
            record.image_labels &= wanted
        record.unknown &= wanted
    return records



def class_names(classes: list[str], class_map: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """(the cache's classes, original name -> cache name): each dataset name made canonical
    (:mod:`hegl_cli.data.pathologies`), then renamed or merged by ``data.class_map`` (keys may be the
    original or the canonical name; merged classes keep the first one's place)."""
    mapping = {}
    for key, value in class_map.items():
        text = value if isinstance(value, str) else ""
        if (not text.strip() or text.strip() in (".", "..") or any(ch in text for ch in "/\\")
                or not text.isprintable()):
            raise UserError(f"config key 'data.class_map': {key!r} -> {value!r} is not a class name (a name is "
                            "printable text without '/' or '\\', e.g. {Pleural_Thickening: Thickening})")
    targets = {canonical(k): v for k, v in class_map.items()}
    for name in classes:
        mapped = canonical(name)
        mapping[name] = canonical(targets.get(mapped, mapped))
    known = {canonical(c) for c in classes}
    unknown = [k for k in class_map if canonical(k) not in known]
    if unknown:
        raise UserError(f"config key 'data.class_map': {unknown[0]!r} is not a class of this dataset "
                        f"(classes: {', '.join(classes)})")
    return list(dict.fromkeys(mapping.values())), mapping



def rename_classes(records: list[Record], mapping: dict[str, str]) -> list[Record]:
    """Every label, finding and unknown class of ``records`` under its cache name; a label merged from
    several is positive when any is, and unknown only when none is positive."""
    for record in records:
        for finding in record.findings:
            finding.label = mapping.get(finding.label, finding.label)
        if record.image_labels is not None:
            record.image_labels = {mapping.get(label, label) for label in record.image_labels}
        record.unknown = {mapping.get(label, label) for label in record.unknown} - record.labels
    return records



def keep_views(parsed: dict[str, tuple[SplitSource, list[Record]]], views: list[str]
               ) -> tuple[dict[str, tuple[SplitSource, list[Record]]], int]:
    """Only the images of ``data.views`` (by their 'view' metadata, any case, one spelling per view:
    :func:`~hegl_cli.data.records.view_name`); how many were left out."""
    if not views:
        return parsed, 0
    wanted = {view_name(v) for v in views}
    for src, records in parsed.values():
        for record in records:  # a DICOM says its view in its header: read it now to choose
            path = src.images / record.file_name
            if "view" not in record.meta and is_dicom(path) and path.is_file():
                record.meta = {**dicom_metadata(path), **record.meta}
    kept = {name: (src, [r for r in records if view_name(r.meta.get("view", "")) in wanted])
            for name, (src, records) in parsed.items()}
    return kept, sum(len(r) for _, r in parsed.values()) - sum(len(r) for _, r in kept.values())
