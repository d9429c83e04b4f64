"""hegl's CheXpert, PadChest and MIMIC-CXR readers against torchxrayvision's, label by label (issue 31).

Reads the real label tables torchxrayvision's wheel ships (CheXpert's train.csv, 223,414 rows;
PadChest's 160,861 rows) with hegl's reader and with torchxrayvision's dataset class (all views,
every image of a patient), and prints per dataset: the images each keeps, the (image, class) cells
both have, the share that agree (NaN equals NaN), every differing kind with its count, the images
only one side keeps with the reason, and whether ``data.views`` picks the images ``views=[...]``
picks. MIMIC-CXR's tables are credentialed and not shipped: its row is a stand-in whose studies
carry the real CheXpert label rows (same labeler), one image each, views from CheXpert's columns.

No image is read (hegl's image check is told every file exists). Needs ``pip install torchxrayvision``.

Usage: python benchmarks/compare_torchxrayvision.py [--only chexpert|padchest|mimic]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from hegl_cli.config import DataConfig
from hegl_cli.data.formats import chexpert, mimic, padchest
from hegl_cli.data.formats import chexpert_labels as cx
from hegl_cli.data.record_filters import keep_views
from hegl_cli.data.records import SplitSource

EVERY_FILE = lambda _path: True  # noqa: E731 - the comparison reads labels, not images


def shipped(name: str) -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None:
        raise SystemExit("torchxrayvision is not installed: pip install torchxrayvision")
    return Path(spec.origin).parent / "data" / name


def shown(value: float) -> float | str:
    """A label as a counter's key ("NaN" for unknown: NaN equals nothing, itself included)."""
    return "NaN" if np.isnan(value) else value


def cell(record, name: str) -> float:
    return float("nan") if name in record.unknown else 1.0 if name in record.image_labels else 0.0


def compare(theirs, ours: dict, keys: list[str], rename=lambda c: c) -> tuple[int, int, Counter]:
    """(cells compared, cells equal, differing cells by (class, hegl, torchxrayvision))."""
    total = equal = 0
    differ: Counter = Counter()
    for i, key in enumerate(keys):
        record = ours.get(key)
        if record is None:
            continue
        for j, c in enumerate(theirs.pathologies):
            a, b = cell(record, rename(str(c))), float(theirs.labels[i, j])
            total += 1
            if (np.isnan(a) and np.isnan(b)) or a == b:
                equal += 1
            else:
                differ[(str(c), shown(a), shown(b))] += 1
    return total, equal, differ


def views_of(records: list, views: list[str]) -> set[str]:
    kept, _ = keep_views({"x": (SplitSource("x", Path("."), Path(".")), list(records))}, views)
    return {r.file_name for r in kept["x"][1]}


def report(name: str, kept: tuple[int, int, int], cells: tuple[int, int, Counter], only: dict[str, Counter],
           views: dict[str, bool]) -> None:
    total, equal, differ = cells
    print(f"\n{name}: hegl keeps {kept[0]} images, torchxrayvision {kept[1]}, both {kept[2]}")
    print(f"  (image, class) cells compared {total}, equal {equal}: agreement {equal / total:.6f} "
          f"({100 * equal / total:.3f}%)")
    for (c, a, b), n in differ.most_common():
        print(f"  differs: {c}: hegl {a} vs torchxrayvision {b}: {n} cells")
    for side, reasons in only.items():
        for why, n in reasons.most_common():
            print(f"  only {side}: {n} images ({why})")
    print("  views: " + ", ".join(f"{v} {'same images' if same else 'DIFFERENT'}" for v, same in views.items()))


def chexpert_rows(folder: Path) -> None:
    import torchxrayvision as xrv

    table = shipped("chexpert_train.csv.gz")
    root = folder / "CheXpert-v1.0-small"
    root.mkdir()
    (root / "train.csv").write_bytes(gzip.decompress(table.read_bytes()))
    (root / "valid.csv").write_text((root / "train.csv").open().readline())
    policy = cx.label_policy(DataConfig(), chexpert.CHEXPERT_CLASSES, chexpert.SPARED)
    splits, problems, _, _ = chexpert.read_chexpert(root, chexpert.CHEXPERT_CLASSES, policy, exists=EVERY_FILE)
    ours = {r.file_name: r for r in splits["train"]}
    theirs = xrv.datasets.CheX_Dataset(imgpath=str(folder), csvpath=str(table), views=["*"], unique_patients=False)
    keys = [p.split("/", 1)[1] for p in theirs.csv.Path]
    views = {}
    for v in ("PA", "AP", "L"):
        chosen = xrv.datasets.CheX_Dataset(imgpath=str(folder), csvpath=str(table), views=[v], unique_patients=False)
        views[v] = views_of(splits["train"], [v]) == {p.split("/", 1)[1] for p in chosen.csv.Path}
    report("CheXpert (real train.csv)", (len(ours), len(keys), len(set(ours) & set(keys))),
           compare(theirs, ours, keys, lambda c: "Pleural Effusion" if c == "Effusion" else c),
           {"hegl": Counter({p: 1 for p in problems})}, views)


def padchest_rows(folder: Path) -> None:
    import torchxrayvision as xrv

    table = shipped("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz")
    (folder / table.name).symlink_to(table)
    splits, problems, _ = padchest.read_padchest(folder, padchest.PADCHEST_CLASSES, 0, exists=EVERY_FILE)
    records = [r for s in splits.values() for r in s]
    ours = {Path(r.file_name).name: r for r in records}
    theirs = xrv.datasets.PC_Dataset(imgpath=str(folder), views=["*"], unique_patients=False)
    keys = list(theirs.csv.ImageID)
    with gzip.open(table, "rt", newline="") as handle:
        birth = {r["ImageID"]: r["PatientBirth"] for r in csv.DictReader(handle)}
    left_out = {p.split(": ", 2)[1].split(" (")[-1].rstrip(")"): p.split("; ")[0].split(": ", 2)[-1] for p in problems}
    only_txv = Counter(f"hegl leaves it out: {left_out.get(i, '?')}; torchxrayvision reads every class 0"
                       for i in set(keys) - set(ours))
    only_hegl = Counter("torchxrayvision drops it: age <= 10 at 2019 or no birth year"
                        if not birth[i] or 2019 - float(birth[i]) <= 10 else
                        "torchxrayvision drops it: on its list of broken PNG files" for i in set(ours) - set(keys))
    both = set(ours) & set(keys)
    views = {}
    for v in ("PA", "L", "AP", "AP Supine"):
        chosen = xrv.datasets.PC_Dataset(imgpath=str(folder), views=[v], unique_patients=False)
        views[v] = {Path(n).name for n in views_of(records, [v])} & both == set(chosen.csv.ImageID) & both
    report("PadChest (real 160K table)", (len(ours), len(keys), len(both)), compare(theirs, ours, keys),
           {"torchxrayvision": only_txv, "hegl": only_hegl}, views)
    print("  (views compared over the images both keep)")


def mimic_stand_in(folder: Path) -> None:
    import torchxrayvision as xrv

    with gzip.open(shipped("chexpert_train.csv.gz"), "rt", newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = ["subject_id", "study_id", *cx.OBSERVATIONS]
    tables = {k: gzip.open(folder / f"mimic-cxr-2.0.0-{k}.csv.gz", "wt", newline="")
              for k in ("chexpert", "metadata", "split")}
    writers = {k: csv.writer(h) for k, h in tables.items()}
    writers["chexpert"].writerow(names)
    writers["metadata"].writerow(["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate"])
    writers["split"].writerow(["dicom_id", "study_id", "subject_id", "split"])
    for i, r in enumerate(rows):
        subject, study, dicom = f"1{int(r['Path'].split('patient')[1][:5]):07d}", f"5{i:07d}", f"d{i:07x}"
        writers["chexpert"].writerow([subject, study, *(r[o] for o in cx.OBSERVATIONS)])
        writers["metadata"].writerow([dicom, subject, study,
                                      "LATERAL" if r["Frontal/Lateral"] == "Lateral" else r["AP/PA"], "21800506"])
        writers["split"].writerow([dicom, study, subject, ["train", "validate", "test"][int(subject) % 3]])
    for handle in tables.values():
        handle.close()
    policy = cx.label_policy(DataConfig(), mimic.MIMIC_CLASSES)
    found, problems, _ = mimic.read_mimic(folder, mimic.MIMIC_CLASSES, policy, exists=EVERY_FILE)
    records = [r for s in found.values() for r in s]
    ours = {Path(r.file_name).stem: r for r in records}
    paths = {k: str(folder / f"mimic-cxr-2.0.0-{k}.csv.gz") for k in ("chexpert", "metadata")}
    theirs = xrv.datasets.MIMIC_Dataset(imgpath=str(folder), csvpath=paths["chexpert"], metacsvpath=paths["metadata"],
                                        views=["*"], unique_patients=False)
    keys = list(theirs.csv.dicom_id)
    views = {}
    for v in ("PA", "AP", "LATERAL"):
        chosen = xrv.datasets.MIMIC_Dataset(imgpath=str(folder), csvpath=paths["chexpert"],
                                            metacsvpath=paths["metadata"], views=[v], unique_patients=False)
        views[v] = {Path(n).stem for n in views_of(records, [v])} == set(chosen.csv.dicom_id)
    report("MIMIC-CXR (stand-in: the real CheXpert label rows as MIMIC studies)",
           (len(ours), len(keys), len(set(ours) & set(keys))),
           compare(theirs, ours, keys, lambda c: "Pleural Effusion" if c == "Effusion" else c),
           {"hegl": Counter({p: 1 for p in problems})}, views)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["chexpert", "padchest", "mimic"])
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    for name, run in (("chexpert", chexpert_rows), ("padchest", padchest_rows), ("mimic", mimic_stand_in)):
        if args.only in (None, name):
            with tempfile.TemporaryDirectory() as tmp:
                run(Path(tmp))


if __name__ == "__main__":
    main()
