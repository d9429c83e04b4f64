"""Reading a CheXpert-sized table: peak memory and rows per second of `hegl prepare --format chexpert`'s
reader (issue 31). A benchmark, not a test: it prints what it measured.

It writes a CheXpert-shaped dataset of ``--rows`` rows (224,316 by default, the size of CheXpert's
train + valid): ``CheXpert-v1.0-small/train.csv`` with the official columns, ``patientNNNNN/studyN``
paths (about 3.5 images a patient) and labels drawn with CheXpert's rough rates of 1 / 0 / -1 /
blank, and every image as a hard link to a tiny JPEG (so the reader's existence check is real).
Then, each in a fresh process so that ``ru_maxrss`` is that reading's own peak:

- ``stream``: the table streamed row by row (:func:`hegl_cli.fs.tables.stream_table`), nothing kept;
- ``whole``: the table read whole (:func:`hegl_cli.fs.tables.read_table`, every row kept as text);
- ``chexpert``: the format's reader (:func:`hegl_cli.data.formats.chexpert.read_chexpert`): the
  records the cache builder is handed, one per image.

For each: the process's peak resident memory after the imports, after the reading, the difference,
and rows per second. ``--gzip`` writes ``train.csv.gz``-like input for the stream/whole modes too.

Usage: python benchmarks/bench_field_prepare.py [--rows 224316] [--folder /tmp/hegl-bench-field] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OBSERVATIONS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                "Fracture", "Support Devices"]
COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS]
CELLS = np.array(["1.0", "0.0", "-1.0", ""])
LINKS = 50_000


def write_dataset(root: Path, rows: int, seed: int = 0) -> Path:
    """``root/CheXpert-v1.0-small`` with train.csv (``rows`` rows), an empty valid.csv and the images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = root / "CheXpert-v1.0-small"
    (base / "train").mkdir(parents=True, exist_ok=True)
    jpegs = [root / f"one{k}.jpg" for k in range(rows // LINKS + 1)]  # a file takes at most ~65,000 links
    for jpeg in jpegs:
        Image.new("L", (24, 20), 90).save(jpeg, "JPEG")
    rates = np.array([0.2, 0.1, 0.07, 0.63])  # 1, 0, -1, blank: CheXpert's observation columns, roughly
    start = time.perf_counter()
    with open(base / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        patient, study, image = 1, 1, 0
        for i in range(rows):
            image += 1
            if image > 2 or rng.random() < 0.5:
                image, study = 1, study + 1
                if study > 2 or rng.random() < 0.3:
                    patient, study = patient + 1, 1
            lateral = image == 2
            name = f"train/patient{patient:05d}/study{study}/view{image}_{'lateral' if lateral else 'frontal'}.jpg"
            healthy = rng.random() < 0.1
            cells = ["1.0" if healthy else ""] + [
                "" if healthy and rng.random() < 0.8 else str(c) for c in rng.choice(CELLS, 13, p=rates)]
            writer.writerow([f"CheXpert-v1.0-small/{name}", "Female" if patient % 2 else "Male", str(20 + patient % 70),
                             "Lateral" if lateral else "Frontal", "" if lateral else ("AP" if i % 5 else "PA"), *cells])
            target = base / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(jpegs[i // LINKS], target)
    (base / "valid.csv").write_text(",".join(COLUMNS) + "\n")
    with open(base / "train.csv", "rb") as src, gzip.open(root / "train.csv.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    print(f"wrote {rows} rows and their image links under {base} in {time.perf_counter() - start:.0f} s")
    return base


def measure(mode: str, base: Path, table: Path) -> dict:
    """One reading in this process: peak memory (MiB) before and after, rows, seconds."""
    from hegl_cli.config import DataConfig
    from hegl_cli.data.formats import chexpert
    from hegl_cli.data.formats import chexpert_labels as cx
    from hegl_cli.fs.tables import read_table, stream_table

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if mode == "stream":
        with stream_table(table, "table", {"Path"}) as rows:
            n = sum(1 for _ in rows)
    elif mode == "whole":
        n = len(read_table(table, "table", {"Path"}).rows)
    else:
        policy = cx.label_policy(DataConfig(), chexpert.CHEXPERT_CLASSES, chexpert.SPARED)
        splits, problems, _, _ = chexpert.read_chexpert(base, chexpert.CHEXPERT_CLASSES, policy)
        n = len(splits["train"])
        assert not problems, problems[:3]
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "table": table.name, "rows": n, "seconds": seconds, "rows_per_s": n / seconds,
            "maxrss_after_imports_mib": before, "maxrss_after_reading_mib": after, "reading_mib": after - before}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=224_316)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/hegl-bench-field"))
    parser.add_argument("--keep", action="store_true", help="keep the dataset (and reuse one already there)")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "BASE", "TABLE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, base, table = args.child
        print(json.dumps(measure(mode, Path(base), Path(table))))
        return
    base = args.folder / "CheXpert-v1.0-small"
    if not (args.keep and (args.folder / "train.csv.gz").is_file()):
        shutil.rmtree(args.folder, ignore_errors=True)
        base = write_dataset(args.folder, args.rows)
    runs = [("stream", base / "train.csv"), ("stream", args.folder / "train.csv.gz"), ("whole", base / "train.csv"),
            ("whole", args.folder / "train.csv.gz"), ("chexpert", base / "train.csv")]
    print(f"{'reading':<10}{'table':<14}{'rows':>8}{'rows/s':>10}{'imports MiB':>13}{'peak MiB':>10}{'reading MiB':>13}")
    for mode, table in runs:
        found = subprocess.run([sys.executable, __file__, "--child", mode, str(base), str(table)], check=True,
                               capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        r = json.loads(found.stdout.strip().splitlines()[-1])
        print(f"{r['mode']:<10}{r['table']:<14}{r['rows']:>8}{r['rows_per_s']:>10.0f}{r['maxrss_after_imports_mib']:>13.0f}"
              f"{r['maxrss_after_reading_mib']:>10.0f}{r['reading_mib']:>13.0f}")
    if not args.keep:
        shutil.rmtree(args.folder, ignore_errors=True)


if __name__ == "__main__":
    main()
