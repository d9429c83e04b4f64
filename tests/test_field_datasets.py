"""The field's datasets as they ship (issue 31): CheXpert, MIMIC-CXR-JPG and PadChest, read from their
official layout with no rewrite, under named label policies, with their patients and official splits.

The images are not public here: each test writes a small stand-in in the official layout (tiny JPEGs
and 16-bit PNGs, the official columns, MIMIC's three .csv.gz). Where torchxrayvision is installed, its
wheel's real CheXpert and PadChest label tables are read by hegl's readers and by torchxrayvision's,
and the labels compared image by image and class by class (MIMIC's tables are credentialed: its
comparison runs on a stand-in built from the real CheXpert label rows).
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import re
import tracemalloc
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hegl_cli.cli.app import app
from hegl_cli.config import DataConfig, load_config
from hegl_cli.data.cache import CachedSplit
from hegl_cli.data.formats import chexpert_labels as cx
from hegl_cli.errors import UserError

runner = CliRunner()
SIZE = 32
OBSERVATIONS = list(cx.OBSERVATIONS)
CHEX_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS]
TXV = importlib.util.find_spec("torchxrayvision") is not None
needs_txv = pytest.mark.skipif(not TXV, reason="torchxrayvision is not installed (pip install torchxrayvision): "
                                               "its wheel ships the real CheXpert and PadChest label tables")


def txv_data(name: str) -> Path:
    """A label table shipped in torchxrayvision's wheel."""
    spec = importlib.util.find_spec("torchxrayvision")
    path = Path(spec.origin).parent / "data" / name
    if not path.is_file():
        pytest.skip(f"torchxrayvision does not ship {name}")
    return path


def invoke(*args: str):
    return runner.invoke(app, ["-q", "prepare", "--image-size", str(SIZE), "--workers", "1", *args])


def prepare(*args: str) -> dict:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "manifest.json").read_text())


def one_line_error(result, *needles: str) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def cached_labels(out: Path) -> tuple[dict[str, dict[str, float]], dict[str, str], dict[str, dict[str, str]]]:
    """file name -> {class: label}, file name -> split, file name -> metadata, over every split."""
    manifest = json.loads((out / "manifest.json").read_text())
    labels, split_of, meta = {}, {}, {}
    for split in manifest["splits"]:
        cached = CachedSplit(out, split)
        for i, name in enumerate(cached.files):
            labels[name] = {c: float(cached.labels[i, k]) for k, c in enumerate(cached.classes)}
            split_of[name] = split
            meta[name] = {column: values[i] for column, values in cached.metadata.items()}
    return labels, split_of, meta


def same(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or a == b


def tiny_jpeg(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (24, 20), value).save(path, "JPEG")


def write_csv(path: Path, columns: list[str], rows: list[dict], compress: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open(path, "wt", newline="") if compress else open(path, "w", newline="")) as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows([{c: row.get(c, "") for c in columns} for row in rows])


# --- CheXpert ----------------------------------------------------------------------------------------
def chex_row(split: str, patient: int, study: int, view: str, **labels: str) -> dict:
    """One row as CheXpert writes it: view is PA, AP or L; labels by column name ('1.0', '-1.0', ...)."""
    kind = "lateral" if view == "L" else "frontal"
    row = {"Path": f"CheXpert-v1.0-small/{split}/patient{patient:05d}/study{study}/view1_{kind}.jpg"
                   if kind == "frontal" else
                   f"CheXpert-v1.0-small/{split}/patient{patient:05d}/study{study}/view2_{kind}.jpg",
           "Sex": "Female" if patient % 2 else "Male", "Age": str(40 + patient),
           "Frontal/Lateral": "Lateral" if view == "L" else "Frontal", "AP/PA": "" if view == "L" else view}
    row.update({k.replace("_", " "): v for k, v in labels.items()})
    return row


def write_chexpert(root: Path, tables: dict[str, list[dict]], folder: str = "CheXpert-v1.0-small") -> Path:
    """``root/folder`` with one CSV per table (train, valid, test) and a tiny JPEG for every row."""
    base = root / folder
    for name, rows in tables.items():
        write_csv(base / f"{name}.csv", CHEX_COLUMNS, rows)
        for i, row in enumerate(rows):
            tiny_jpeg(base / row["Path"].split("/", 1)[1], 50 + i % 150)
    return base


def chexpert_stand_in(root: Path, patients: int = 12, valid_patients: int = 3) -> Path:
    """Patients with two studies of a frontal and a lateral image each, and a valid.csv of others."""
    train = []
    for p in range(1, patients + 1):
        for study in (1, 2):
            view = "PA" if (p + study) % 3 else "AP"
            labels = {"No_Finding": "1.0"} if p % 4 == 0 else {"Cardiomegaly": "1.0", "Edema": "-1.0"}
            train += [chex_row("train", p, study, view, **labels), chex_row("train", p, study, "L", **labels)]
    valid = [chex_row("valid", 64540 + p, 1, "PA", Pleural_Effusion="1.0", Atelectasis="0.0", Edema="0.0")
             for p in range(1, valid_patients + 1)]
    return write_chexpert(root, {"train": train, "valid": valid})


def test_chexpert_label_policies_no_finding_and_uncertainty_per_class(tmp_path):
    """A blank on a No Finding row is negative (Support Devices spared); -1 is unknown, U-Ones or U-Zeros,
    per class; each policy is recorded in the manifest; a 1 or -1 on a No Finding row keeps its meaning."""
    rows = [
        chex_row("train", 1, 1, "PA", No_Finding="1.0", Support_Devices="1.0", Pneumothorax="0.0"),
        chex_row("train", 2, 1, "PA", No_Finding="1.0", Fracture="-1.0"),
        chex_row("train", 3, 1, "PA", Cardiomegaly="1.0", Atelectasis="-1.0", Edema="-1.0"),
        *[chex_row("train", p, 1, "AP", Cardiomegaly="0.0") for p in range(4, 12)],
    ]
    valid = [chex_row("valid", 64541, 1, "PA", Atelectasis="1.0", Pleural_Effusion="0.0")]
    source = write_chexpert(tmp_path / "src", {"train": rows, "valid": valid})
    name = {p: f"train/patient{p:05d}/study1/view1_frontal.jpg" for p in (1, 2, 3)}
    nan = float("nan")

    manifest = prepare("--format", "chexpert", "--source", str(source), "--out", str(tmp_path / "default"))
    labels, _, _ = cached_labels(tmp_path / "default")
    assert manifest["label_policy"] == {"no_finding": "negative", "no_finding_spares": ["Support Devices"],
                                        "uncertain": "unknown", "uncertain_per_class": {},
                                        "uncertain_by_class": {c: "unknown" for c in manifest["classes"]}}
    first = labels[name[1]]
    assert first["Support Devices"] == 1 and first["Pneumothorax"] == 0
    assert all(first[c] == 0 for c in manifest["classes"] if c != "Support Devices")
    assert np.isnan(labels[name[2]]["Support Devices"])  # spared: the labeler's No Finding says nothing of devices
    assert np.isnan(labels[name[2]]["Fracture"])  # a -1 on a No Finding row stays uncertain
    third = labels[name[3]]
    assert third["Cardiomegaly"] == 1 and np.isnan(third["Atelectasis"]) and np.isnan(third["Edema"])
    assert np.isnan(third["Effusion"])  # blank, no No Finding: not mentioned

    manifest = prepare("--format", "chexpert", "--source", str(source), "--out", str(tmp_path / "policy"),
                       "--set", "data.label_uncertain=zeros",
                       "--set", "data.label_uncertain_per_class={atelectasis: ones}",
                       "--set", "data.label_no_finding=unknown")
    labels, _, _ = cached_labels(tmp_path / "policy")
    assert manifest["label_policy"]["uncertain_by_class"]["Atelectasis"] == "ones"
    assert manifest["label_policy"]["uncertain_per_class"] == {"atelectasis": "ones"}  # as given
    assert labels[name[3]]["Atelectasis"] == 1 and labels[name[3]]["Edema"] == 0  # U-Ones, U-Zeros
    assert labels[name[2]]["Fracture"] == 0 and np.isnan(labels[name[1]]["Edema"])  # No Finding blanks unknown
    assert labels[name[1]]["Pneumothorax"] == 0 and labels[name[1]]["Support Devices"] == 1
    assert all(same(labels[name[p]][c], v) for p, c, v in [(3, "Cardiomegaly", 1.0), (3, "Effusion", nan)])

    bad = invoke("--format", "chexpert", "--source", str(source), "--out", str(tmp_path / "bad"),
                 "--set", "data.label_uncertain_per_class={Tumour: ones}")
    one_line_error(bad, "data.label_uncertain_per_class", "'Tumour' is not a class")
    bad = invoke("--format", "chexpert", "--source", str(source), "--out", str(tmp_path / "bad"),
                 "--set", "data.label_uncertain_per_class={Edema: maybe}")
    one_line_error(bad, "'Edema' -> 'maybe'", "unknown, ones, zeros")


def test_chexpert_patients_splits_views_and_original_names(tmp_path):
    """valid.csv is the held-out test split, val is carved from train by patient, no patient is in two
    splits; the folder itself or the folder holding it both work; views are PA, AP and L."""
    source = chexpert_stand_in(tmp_path / "src")
    manifest = prepare("--format", "chexpert", "--source", str(source.parent), "--out", str(tmp_path / "c"))
    labels, split_of, meta = cached_labels(tmp_path / "c")
    assert set(manifest["splits"]) == {"train", "val", "test"} and sum(manifest["splits"].values()) == 12 * 4 + 3
    assert {n for n, s in split_of.items() if s == "test"} == {n for n in labels if n.startswith("valid/")}
    owners = defaultdict(set)
    for name, split in split_of.items():
        owners[name.split("/")[1]].add(split)
        assert meta[name]["study"] == "/".join(name.split("/")[1:3])
    assert all(len(s) == 1 for s in owners.values()) and {"train", "val"} <= {s for v in owners.values() for s in v}
    assert Counter(m["view"] for m in meta.values()) == {"L": 24, "PA": 19, "AP": 8}
    assert manifest["original_names"]["Effusion"] == ["Pleural Effusion"]
    assert manifest["original_names"]["Cardiomegaly"] == ["Cardiomegaly"]
    assert all(labels[n]["Effusion"] == 1 for n, s in split_of.items() if s == "test")
    again = prepare("--format", "chexpert", "--source", str(source), "--out", str(tmp_path / "d"))
    assert again["splits"] == manifest["splits"] and again["classes"] == manifest["classes"]

    pa = prepare("--format", "chexpert", "--source", str(source), "--out", str(tmp_path / "pa"),
                 "--set", "data.views=[pa]")
    _, _, pa_meta = cached_labels(tmp_path / "pa")
    assert sum(pa["splits"].values()) == 19 and {m["view"] for m in pa_meta.values()} == {"PA"}


def test_chexpert_a_labelled_test_csv_makes_valid_the_val_split(tmp_path):
    source = chexpert_stand_in(tmp_path / "src")
    test_rows = [chex_row("test", 64740 + p, 1, "PA", Edema="1.0") for p in range(1, 4)]
    write_csv(source / "test.csv", CHEX_COLUMNS, test_rows)
    for row in test_rows:
        tiny_jpeg(source / row["Path"].split("/", 1)[1])
    manifest = prepare("--format", "chexpert", "--source", str(source), "--out", str(tmp_path / "c"))
    _, split_of, _ = cached_labels(tmp_path / "c")
    assert {n.split("/")[0] for n, s in split_of.items() if s == "val"} == {"valid"}
    assert {n.split("/")[0] for n, s in split_of.items() if s == "test"} == {"test"}
    assert manifest["splits"]["val"] == 3 and manifest["splits"]["test"] == 3

    (source / "test.csv").write_text("Path\n" + "".join(r["Path"] + "\n" for r in test_rows))  # no labels
    manifest = prepare("--format", "chexpert", "--source", str(source), "--out", str(tmp_path / "d"))
    assert manifest["splits"]["test"] == 3 and "test.csv: no observation columns" in (
        tmp_path / "d" / "skipped.txt").read_text()


def test_chexpert_bad_cells_and_missing_images_are_named(tmp_path):
    source = chexpert_stand_in(tmp_path / "src")
    rows = list(csv.DictReader((source / "train.csv").open()))
    rows[0]["Edema"] = "maybe"
    rows[1]["Path"] = "CheXpert-v1.0-small/train/patient99999/study1/view1_frontal.jpg"
    write_csv(source / "train.csv", CHEX_COLUMNS, rows)
    prepare("--format", "chexpert", "--source", str(source), "--out", str(tmp_path / "c"))
    skipped = (tmp_path / "c" / "skipped.txt").read_text()
    assert "train.csv: line 2 (train/patient00001/study1/view1_frontal.jpg): column 'Edema' holds 'maybe'" in skipped
    assert "image not found: train/patient99999/study1/view1_frontal.jpg (train.csv, line 3)" in skipped


# --- MIMIC-CXR-JPG -----------------------------------------------------------------------------------
MIMIC_META = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
              "Columns", "StudyDate", "StudyTime"]


def mimic_stand_in(root: Path, split_value: dict[str, str] | None = None) -> tuple[Path, dict[str, tuple]]:
    """The three .csv.gz tables and files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg; returns dicom_id ->
    (subject, study, split, view)."""
    labels, meta, splits, truth = [], [], [], {}
    for s in range(10):
        subject = f"1{s:07d}"
        split = "validate" if s in (3, 7) else "test" if s == 5 else "train"
        for k in range(2):
            study = f"5{s:04d}{k:03d}"
            row = {"subject_id": subject, "study_id": study}
            row.update({"No Finding": "1.0"} if s % 3 == 0 else {"Cardiomegaly": "1.0", "Atelectasis": "-1.0"})
            labels.append(row)
            for view in ("PA", "LATERAL"):
                dicom = f"{s:04x}{k:02x}-{view.lower()}"
                meta.append({"dicom_id": dicom, "subject_id": subject, "study_id": study, "ViewPosition": view,
                             "Rows": "3056", "Columns": "2544"})
                splits.append({"dicom_id": dicom, "study_id": study, "subject_id": subject,
                               "split": (split_value or {}).get(dicom, split)})
                truth[dicom] = (subject, study, split, view)
                tiny_jpeg(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg")
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *OBSERVATIONS], labels, True)
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", MIMIC_META, meta, True)
    write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], splits, True)
    return root, truth


def test_mimic_official_splits_patients_views_and_labels(tmp_path):
    source, truth = mimic_stand_in(tmp_path / "mimic")
    manifest = prepare("--format", "mimic", "--source", str(source), "--out", str(tmp_path / "c"))
    labels, split_of, meta = cached_labels(tmp_path / "c")
    expected = {"train": "train", "validate": "val", "test": "test"}
    assert len(labels) == 40 and set(manifest["splits"]) == {"train", "val", "test"}
    for name, split in split_of.items():
        dicom = Path(name).stem
        subject, study, official, view = truth[dicom]
        assert split == expected[official], name  # validate is val, kept: no val carved from train
        assert name == f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
        assert meta[name]["view"] == ("L" if view == "LATERAL" else view) and meta[name]["study"] == study
        healthy = int(subject[1:]) % 3 == 0
        if healthy:  # MIMIC as torchxrayvision reads it: No Finding's blanks are negatives, devices too
            assert all(v == 0 for v in labels[name].values())
        else:
            assert labels[name]["Cardiomegaly"] == 1 and np.isnan(labels[name]["Atelectasis"])
    assert manifest["label_policy"]["no_finding_spares"] == []
    lateral = prepare("--format", "mimic", "--source", str(source), "--out", str(tmp_path / "lat"),
                      "--set", "data.views=[LATERAL]")
    lat = prepare("--format", "mimic", "--source", str(source), "--out", str(tmp_path / "l"), "--set", "data.views=[L]")
    assert lateral["splits"] == lat["splits"] and sum(lat["splits"].values()) == 20


def test_mimic_a_split_value_it_does_not_have_stops_naming_the_row(tmp_path):
    source, truth = mimic_stand_in(tmp_path / "mimic", {"000000-pa": "valid"})
    result = invoke("--format", "mimic", "--source", str(source), "--out", str(tmp_path / "c"))
    one_line_error(result, "mimic-cxr-2.0.0-split.csv.gz: line 2 (000000-pa): split 'valid' is not one of "
                           "MIMIC-CXR's (train, validate, test)")
    assert not (tmp_path / "c").exists()


def test_patients_are_never_in_two_splits_whatever_the_official_split_says(tmp_path):
    """A subject whose images the split file puts in train and test: every image moves to test (named)."""
    source, truth = mimic_stand_in(tmp_path / "mimic", {"000100-pa": "test"})
    prepare("--format", "mimic", "--source", str(source), "--out", str(tmp_path / "c"))
    _, split_of, _ = cached_labels(tmp_path / "c")
    owners = defaultdict(set)
    for name, split in split_of.items():
        owners[truth[Path(name).stem][0]].add(split)
    assert all(len(s) == 1 for s in owners.values()) and owners["10000001"] == {"test"}
    assert "patient '10000001' is also in split 'test'; moved there" in (tmp_path / "c" / "skipped.txt").read_text()


# --- PadChest ----------------------------------------------------------------------------------------
PC_COLUMNS = ["", "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth",
              "PatientSex_DICOM", "ViewPosition_DICOM", "Projection", "MethodProjection", "Labels"]


def padchest_stand_in(root: Path) -> Path:
    rows = []
    labels = ["['normal']", "['pleural effusion', 'cardiomegaly']", "['consolidation']",
              "[' air bronchogram', 'NSG tube']", "['pericardial effusion', 'kyphosis']", "['exclude']", "['']",
              "['martian finding']", "", "['loculated pleural effusion', ' pseudonodule']"]
    projections = ["PA", "L", "AP_horizontal", "AP", "PA", "PA", "PA", "L", "PA", "COSTAL"]
    for i in range(40):
        image = f"2168401113{i:04d}_00-{i:03d}-{i:03d}.png"
        folder = str(i % 3)
        rows.append({"": str(i), "ImageID": image, "ImageDir": folder, "StudyDate_DICOM": "20140915",
                     "StudyID": f"st{i // 2}", "PatientID": f"pat{i // 4}", "PatientBirth": "1930.0",
                     "PatientSex_DICOM": "F" if i % 2 else "M", "Projection": projections[i % 10],
                     "MethodProjection": "Manual review of DICOM fields", "Labels": labels[i % 10]})
        where = root / folder / image if i % 5 else root / image  # the numbered folders, or all in one
        where.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 24), 1000 * (i + 1), np.uint16)).save(where)
    write_csv(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", PC_COLUMNS, rows, True)
    return root


def test_padchest_term_map_many_to_many_and_what_is_left_out(tmp_path):
    source = padchest_stand_in(tmp_path / "pc")
    manifest = prepare("--format", "padchest", "--source", str(source), "--out", str(tmp_path / "c"))
    labels, split_of, meta = cached_labels(tmp_path / "c")
    assert len(labels) == 24  # 40 rows, 4 of each kind left out: exclude, no term, unknown term, no Labels
    positives = {Path(n).name: {c for c, v in row.items() if v == 1} for n, row in labels.items()}
    by_kind = {i % 10: positives.get(f"2168401113{i:04d}_00-{i:03d}-{i:03d}.png") for i in range(10)}
    assert by_kind[0] == set() and by_kind[1] == {"Effusion", "Cardiomegaly"}
    assert by_kind[2] == {"Consolidation", "Infiltration"}  # one term, two classes
    assert by_kind[3] == {"Consolidation", "Infiltration", "Tube"}
    assert by_kind[4] == {"Effusion"} and by_kind[9] == {"Effusion", "Nodule"}  # several terms, one class
    assert all(by_kind[k] is None for k in (5, 6, 7, 8))
    assert not any(np.isnan(v) for row in labels.values() for v in row.values())  # PadChest says every class
    skipped = (tmp_path / "c" / "skipped.txt").read_text()
    for why in ("labelled 'exclude'; left out", "no term (neither normal nor a finding); left out",
                "term 'martian finding' is not in PadChest's vocabulary", "no Labels; left out"):
        assert skipped.count(why) == 4, why
    views = Counter(m["view"] for m in meta.values())
    assert views["AP SUPINE"] == 4 and views["COSTAL"] == 4 and "AP_HORIZONTAL" not in views
    assert {m["age"] for m in meta.values()} == {"84"}
    assert set(manifest["original_names"]["Infiltration"]) >= {"consolidation", "air bronchogram", "infiltrates"}
    assert manifest["original_names"]["Pleural Thickening"][0] == "apical pleural thickening"
    owners = defaultdict(set)
    for name, split in split_of.items():
        owners[int(Path(name).name[10:14]) // 4].add(split)
    assert all(len(s) == 1 for s in owners.values())
    supine = prepare("--format", "padchest", "--source", str(source), "--out", str(tmp_path / "s"),
                     "--set", "data.views=[AP Supine]")
    assert sum(supine["splits"].values()) == 4


def test_padchest_class_map_is_printed_for_the_user_to_check():
    result = runner.invoke(app, ["prepare", "--format", "padchest", "--show-class-map",
                                 "--set", "data.class_map={Pleural_Thickening: Thickening}"])
    assert result.exit_code == 0, result.output
    lines = {line.split("->")[0].strip(): line.split("->")[1].strip() for line in result.output.splitlines()
             if "->" in line}
    assert lines["consolidation"] == "Consolidation, Infiltration" and lines["kyphosis"] == "(no class)"
    assert lines["apical pleural thickening"] == "Thickening" and lines["NSG tube"] == "Tube"
    assert "'exclude'" in result.output.splitlines()[-1]
    chex = runner.invoke(app, ["prepare", "--format", "chexpert", "--show-class-map"])
    assert "Pleural Effusion" in chex.output and "-> Effusion" in chex.output
    one_line_error(runner.invoke(app, ["prepare", "--format", "table", "--show-class-map"]), "--format table")


# --- any table: split values and patients ------------------------------------------------------------
def small_table(root: Path, split: list[str] | None, patient: bool) -> Path:
    rows = []
    for i in range(12):
        tiny_jpeg(root / "img" / f"{i}.jpg", 40 + 10 * i)
        row = {"image": f"img/{i}.jpg", "Pleural_Thickening": str(i % 2)}
        if patient:
            row["patient"] = f"P{i}"
        if split:
            row["split"] = split[i % len(split)]
        rows.append(row)
    write_csv(root / "labels.csv", ["image", "Pleural_Thickening", *(["patient"] if patient else []),
                                    *(["split"] if split else [])], rows)
    return root


def table_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--format", "table", "--source", str(root), "--labels", str(root / "labels.csv"), "--out", str(out),
            "--set", "table.class_columns=[Pleural_Thickening]", *extra]


def test_a_table_split_value_hegl_does_not_know_stops_naming_the_row(tmp_path):
    root = small_table(tmp_path / "t", ["train", "Validate", "TEST", "holdout"], patient=True)
    result = invoke(*table_args(root, tmp_path / "c", "--set", "table.split_column=split",
                                "--set", "table.patient_column=patient"))
    one_line_error(result, "labels.csv: line 5 (img/3.jpg): split 'holdout' is not a split hegl knows")
    root = small_table(tmp_path / "u", ["train", "Validate", "TEST", "training"], patient=True)
    manifest = prepare(*table_args(root, tmp_path / "d", "--set", "table.split_column=split",
                                   "--set", "table.patient_column=patient"))
    assert manifest["splits"] == {"train": 6, "val": 3, "test": 3}
    assert manifest["original_names"] == {"Pleural Thickening": ["Pleural_Thickening"]}  # as the table spells it
    assert not any("patient_column" in w for w in manifest["warnings"])


def test_a_table_split_by_image_is_warned_in_one_line(tmp_path):
    root = small_table(tmp_path / "t", None, patient=False)
    result = runner.invoke(app, ["prepare", "--image-size", str(SIZE), "--workers", "1",
                                 *table_args(root, tmp_path / "c")])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "table.patient_column is not set" in line]
    assert len(warned) == 1 and "drawn by image" in warned[0]
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert any("drawn by image" in w for w in manifest["warnings"])


# --- the settings travel with the cache --------------------------------------------------------------
def test_train_takes_the_label_policy_of_the_cache_and_refuses_another(tmp_path):
    from types import SimpleNamespace

    from hegl_cli.data.manifest import adopt_cache_facts

    source = chexpert_stand_in(tmp_path / "src")
    manifest = prepare("--format", "chexpert", "--source", str(source), "--out", str(tmp_path / "c"),
                       "--set", "data.label_uncertain=ones", "--set", "data.label_uncertain_per_class={Edema: zeros}")
    split = SimpleNamespace(root=tmp_path / "c", image_size=SIZE, classes=manifest["classes"], manifest=manifest)
    cfg = load_config(None, [f"data.image_size={SIZE}"])
    adopt_cache_facts(cfg, split)
    assert cfg.data.label_uncertain == "ones" and cfg.data.label_uncertain_per_class == {"Edema": "zeros"}
    cfg = load_config(None, [f"data.image_size={SIZE}", "data.label_uncertain=zeros"])
    with pytest.raises(UserError, match="prepared with data.label_uncertain=ones"):
        adopt_cache_facts(cfg, split)
    other = SimpleNamespace(root=tmp_path / "n", image_size=SIZE, classes=["Nodule"],
                            manifest={"format": "nih", "splits": {}})
    cfg = load_config(None, [f"data.image_size={SIZE}", "data.label_no_finding=unknown"])
    with pytest.raises(UserError, match=re.escape("a setting of `hegl prepare --format chexpert|mimic`")):
        adopt_cache_facts(cfg, other)


def test_label_policy_reads_every_cell_kind():
    policy = cx.label_policy(DataConfig(label_uncertain_per_class={"Pleural Effusion": "ones"}), cx.CLASSES,
                             ("Support Devices",))
    row = {"No Finding": "1.0", "Edema": "", "Pleural Effusion": "-1", "Fracture": "1", "Support Devices": ""}
    positive, unknown = cx.row_labels(row, ("Edema", "Pleural Effusion", "Fracture", "Support Devices"), policy)
    assert positive == {"Pleural Effusion", "Fracture"} and unknown == {"Support Devices"}
    with pytest.raises(ValueError, match="column 'Edema' holds 'yes'"):
        cx.row_labels({**row, "Edema": "yes"}, ("Edema",), policy)


def test_a_large_table_is_read_in_memory_that_does_not_grow_with_it(tmp_path):
    """stream_table holds one row at a time: reading 10x more rows of a .csv.gz takes no more memory."""
    from hegl_cli.fs.tables import stream_table

    peaks = []
    for n in (20_000, 200_000):
        path = tmp_path / f"t{n}.csv.gz"
        with gzip.open(path, "wt", newline="") as handle:
            handle.write(",".join(CHEX_COLUMNS) + "\n")
            line = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP," + \
                   ",".join(["1.0", "", "-1.0", "0.0"] * 4)[: 60] + "\n"
            handle.writelines(line for _ in range(n))
        tracemalloc.start()
        with stream_table(path, "table", {"Path"}) as rows:
            count = sum(1 for _ in rows)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert count == n
    assert peaks[1] < 1.5 * peaks[0] + (1 << 20), peaks


# --- agreement with torchxrayvision on the real label tables -----------------------------------------
def shown(value: float) -> float | str:
    """A label as a counter's key ("NaN" for unknown: NaN equals nothing, itself included)."""
    return "NaN" if np.isnan(value) else value


def hegl_cell(record, name: str) -> float:
    return float("nan") if name in record.unknown else 1.0 if name in record.image_labels else 0.0


def agreement(txv, ours: dict, key, rename=lambda c: c) -> tuple[float, int, Counter]:
    """Share of (image, class) cells equal (NaN equals NaN) over the images both keep, the cells compared,
    and the differing cells by (class, hegl, torchxrayvision)."""
    equal = total = 0
    differ: Counter = Counter()
    for i, image in enumerate(key(txv)):
        record = ours.get(image)
        if record is None:
            continue
        for j, c in enumerate(txv.pathologies):
            a, b = hegl_cell(record, rename(str(c))), float(txv.labels[i, j])
            total += 1
            if same(a, b):
                equal += 1
            else:
                differ[(str(c), shown(a), shown(b))] += 1
    return equal / total, total, differ


def hegl_views(records: list, views: list[str]) -> set[str]:
    from hegl_cli.data.record_filters import keep_views
    from hegl_cli.data.records import SplitSource

    kept, _ = keep_views({"x": (SplitSource("x", Path("."), Path(".")), list(records))}, views)
    return {r.file_name for r in kept["x"][1]}


@needs_txv
def test_chexpert_real_rows_agree_with_torchxrayvision(tmp_path):
    """Every (image, class) label of the real 223,414-row train.csv, and every view choice, as
    torchxrayvision's CheX_Dataset reads them (all views, every image of a patient)."""
    import torchxrayvision as xrv

    from hegl_cli.data.formats import chexpert

    table = txv_data("chexpert_train.csv.gz")
    source = tmp_path / "CheXpert-v1.0-small"
    source.mkdir()
    (source / "train.csv").write_bytes(gzip.decompress(table.read_bytes()))
    (source / "valid.csv").write_text(",".join(CHEX_COLUMNS) + "\n")
    policy = cx.label_policy(DataConfig(), chexpert.CHEXPERT_CLASSES, chexpert.SPARED)
    splits, problems, _, _ = chexpert.read_chexpert(source, chexpert.CHEXPERT_CLASSES, policy, exists=lambda p: True)
    ours = {r.file_name: r for r in splits["train"]}
    assert len(ours) == 223414 and not problems
    theirs = xrv.datasets.CheX_Dataset(imgpath=str(tmp_path), csvpath=str(table), views=["*"], unique_patients=False)
    paths = lambda d: [p.split("/", 1)[1] for p in d.csv.Path]  # noqa: E731
    share, cells, differ = agreement(theirs, ours, paths, lambda c: "Pleural Effusion" if c == "Effusion" else c)
    assert cells == 223414 * 13 and share >= 0.998, (share, differ.most_common(5))
    assert share == 1.0, differ.most_common(5)  # measured: no cell differs (README)
    for views in (["PA"], ["AP"], ["L"]):
        chosen = xrv.datasets.CheX_Dataset(imgpath=str(tmp_path), csvpath=str(table), views=views,
                                           unique_patients=False)
        assert hegl_views(splits["train"], views) == set(paths(chosen)), views
    patients = {r.patient for r in splits["train"]}
    assert len(patients) == 64540 and all(r.patient in r.file_name for r in splits["train"][:1000])


@needs_txv
def test_padchest_real_rows_agree_with_torchxrayvision(tmp_path):
    """Every label of the images both keep of the real 160,861-row PadChest table; the images only one of
    them keeps are each of a documented kind (README)."""
    import torchxrayvision as xrv

    from hegl_cli.data.formats import padchest

    table = txv_data("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz")
    (tmp_path / table.name).symlink_to(table)
    splits, problems, _ = padchest.read_padchest(tmp_path, padchest.PADCHEST_CLASSES, 0, exists=lambda p: True)
    ours = {Path(r.file_name).name: r for s in splits.values() for r in s}
    theirs = xrv.datasets.PC_Dataset(imgpath=str(tmp_path), views=["*"], unique_patients=False)
    share, cells, differ = agreement(theirs, ours, lambda d: list(d.csv.ImageID))
    assert share >= 0.99 and cells > 150_000 * 28, (share, differ.most_common(5))
    kinds = Counter(p.split("; ")[0].split(": ", 2)[-1] for p in problems)
    assert kinds == {"labelled 'exclude'": 1312, "no term (neither normal nor a finding)": 777, "no Labels": 103}
    only_txv = set(theirs.csv.ImageID) - set(ours)
    assert len(only_txv) <= 1312 + 777  # theirs keeps exclude and no-term images as all-negative
    with gzip.open(table, "rt", newline="") as handle:
        birth = {r["ImageID"]: r["PatientBirth"] for r in csv.DictReader(handle)}
    missing_files = 21  # torchxrayvision's list of broken PNGs
    only_ours = set(ours) - set(theirs.csv.ImageID)
    too_young = {i for i in only_ours if not birth[i] or 2019 - float(birth[i]) <= 10}
    assert len(only_ours - too_young) <= missing_files  # theirs drops ages <= 10 (from 2019) and broken files
    for views in (["PA"], ["L"], ["AP Supine"]):
        chosen = xrv.datasets.PC_Dataset(imgpath=str(tmp_path), views=views, unique_patients=False)
        both = set(ours) & set(theirs.csv.ImageID)
        mine = {Path(n).name for n in hegl_views(list(ours.values()), views)} & both
        assert mine == set(chosen.csv.ImageID) & both, views


@needs_txv
def test_mimic_reader_agrees_with_torchxrayvision_on_a_stand_in_of_real_label_rows(tmp_path):
    """MIMIC's tables are credentialed: a stand-in whose studies carry the real CheXpert label rows (the
    same labeler), read by hegl and by torchxrayvision's MIMIC_Dataset. Every differing cell is the one
    documented kind: a 1 or -1 on a No Finding row, which torchxrayvision overwrites with 0."""
    import torchxrayvision as xrv

    from hegl_cli.data.formats import mimic

    rows = list(csv.DictReader(gzip.open(txv_data("chexpert_train.csv.gz"), "rt")))[::7]
    labels, meta, splits = [], [], []
    for i, r in enumerate(rows):
        subject, study, dicom = f"1{int(r['Path'].split('patient')[1][:5]):07d}", f"5{i:07d}", f"d{i:07x}"
        labels.append({"subject_id": subject, "study_id": study, **{o: r[o] for o in OBSERVATIONS}})
        view = "LATERAL" if r["Frontal/Lateral"] == "Lateral" else r["AP/PA"]
        meta.append({"dicom_id": dicom, "subject_id": subject, "study_id": study, "ViewPosition": view})
        splits.append({"dicom_id": dicom, "study_id": study, "subject_id": subject,
                       "split": ["train", "validate", "test"][int(subject) % 3]})
    write_csv(tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *OBSERVATIONS], labels, True)
    write_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz", MIMIC_META, meta, True)
    write_csv(tmp_path / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], splits, True)
    policy = cx.label_policy(DataConfig(), mimic.MIMIC_CLASSES)
    found, problems, _ = mimic.read_mimic(tmp_path, mimic.MIMIC_CLASSES, policy, exists=lambda p: True)
    ours = {Path(r.file_name).stem: r for s in found.values() for r in s}
    assert len(ours) == len(rows) and not problems
    theirs = xrv.datasets.MIMIC_Dataset(imgpath=str(tmp_path), csvpath=str(tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz"),
                                        metacsvpath=str(tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz"), views=["*"],
                                        unique_patients=False)
    share, cells, differ = agreement(theirs, ours, lambda d: list(d.csv.dicom_id),
                                     lambda c: "Pleural Effusion" if c == "Effusion" else c)
    healthy_kept = sum(1 for r in rows if r["No Finding"] == "1.0" for o in cx.CLASSES if r[o] in ("1.0", "-1.0"))
    assert sum(differ.values()) == healthy_kept, differ  # each of the documented kind, and only those
    assert all(b == 0.0 and a in (1.0, "NaN") for (_, a, b) in differ)
    assert share >= 0.99, share
    same_policy = cx.label_policy(DataConfig(label_no_finding="all-negative"), mimic.MIMIC_CLASSES)
    found, _, _ = mimic.read_mimic(tmp_path, mimic.MIMIC_CLASSES, same_policy, exists=lambda p: True)
    ours_alike = {Path(r.file_name).stem: r for s in found.values() for r in s}
    share_alike, _, differ_alike = agreement(theirs, ours_alike, lambda d: list(d.csv.dicom_id),
                                             lambda c: "Pleural Effusion" if c == "Effusion" else c)
    assert share_alike == 1.0, differ_alike.most_common(5)  # data.label_no_finding=all-negative reads as it does
    for views in (["PA"], ["LATERAL"], ["AP"]):
        chosen = xrv.datasets.MIMIC_Dataset(imgpath=str(tmp_path),
                                            csvpath=str(tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz"),
                                            metacsvpath=str(tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz"),
                                            views=views, unique_patients=False)
        assert {Path(n).stem for n in hegl_views(list(ours.values()), views)} == set(chosen.csv.dicom_id), views


# --- DICOM as hospitals send it: Presentation LUT Shape ----------------------------------------------
def dx_file(path: Path, photometric: str, shape: str | None) -> Path:
    """A DX For Presentation image written to the standard by pydicom: 12-bit ramp, a VOI window, and a
    Presentation LUT Shape (DX: INVERSE with MONOCHROME1, IDENTITY with MONOCHROME2)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image, For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "DX"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 16, 64, 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    if shape is not None:
        ds.PresentationLUTShape = shape
    ds.PixelData = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (16, 1)).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_presentation_lut_shape_inverse_is_applied_once(tmp_path):
    """INVERSE inverts after the VOI; MONOCHROME1 with INVERSE (what DX requires) is one inversion, not
    two; a real MONOCHROME1 chest X-ray rewritten with each combination reads as the standard says."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_presentation_lut, apply_voi_lut

    from hegl_cli.data.images import load_image

    ramp = load_image(dx_file(tmp_path / "m2.dcm", "MONOCHROME2", "IDENTITY"))[0]
    assert ramp[0] < 0.01 and ramp[-1] > 0.99  # stored 0 is black
    for photometric, shape in (("MONOCHROME1", "INVERSE"), ("MONOCHROME1", None), ("MONOCHROME2", "INVERSE")):
        read = load_image(dx_file(tmp_path / f"{photometric}-{shape}.dcm", photometric, shape))[0]
        np.testing.assert_allclose(read, 1 - ramp, atol=1e-6, err_msg=f"{photometric} {shape}")
    m2_inverse = pydicom.dcmread(tmp_path / "MONOCHROME2-INVERSE.dcm")
    theirs = apply_presentation_lut(apply_voi_lut(apply_modality_lut(m2_inverse.pixel_array, m2_inverse),
                                                  m2_inverse), m2_inverse)[0]
    assert np.all(np.diff(theirs) <= 0) and np.all(np.diff(load_image(tmp_path / "MONOCHROME2-INVERSE.dcm")[0]) <= 0)

    real = Path(pydicom.data.get_testdata_file("RG1_UNCR.dcm") or "")  # a real MONOCHROME1 CR (pydicom-data)
    if not real.is_file():
        pytest.skip("pydicom-data's RG1_UNCR.dcm is not installed")
    reference = load_image(real)
    ds = pydicom.dcmread(real)
    for photometric, shape, inverted in (("MONOCHROME1", "INVERSE", False), ("MONOCHROME2", "INVERSE", False),
                                         ("MONOCHROME2", "IDENTITY", True), ("MONOCHROME1", "IDENTITY", False)):
        ds.PhotometricInterpretation, ds.PresentationLUTShape = photometric, shape
        ds.save_as(tmp_path / "real.dcm")
        expected = 1 - reference if inverted else reference
        np.testing.assert_allclose(load_image(tmp_path / "real.dcm"), expected, atol=1e-6,
                                   err_msg=f"{photometric} {shape}")
