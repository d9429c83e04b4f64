"""The model card: one Markdown page on what a trained run is, what it was trained on, how it scored,
and where it should not be trusted (`hegl report RUN --card`, and beside every `hegl export`).

Every number is read from the run's own files: its checkpoint description, its cache's manifest,
``eval/test.json`` (metrics with intervals, calibration, subgroups, the shortcut audit, the explanation
methods), the robustness record, the evaluations and recalibrations on other sites. A section whose file
is missing says ``not measured`` and the command that measures it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml

from hegl_cli import __version__
from hegl_cli.config import Config, config_from_dict
from hegl_cli.data.cache import read_manifest
from hegl_cli.data.combined import data_paths
from hegl_cli.data.images import CONTAINER_NAMES, trained_reading_shift
from hegl_cli.engine.checkpoint import load_meta, source_commit
from hegl_cli.engine.run_folder import RunFolder, robustness_files
from hegl_cli.errors import UserError, reading_record
from hegl_cli.evaluation.calibration import MIN_GROUP
from hegl_cli.fs.outputs import OutputFolder
from hegl_cli.fs.tables import read_json

FEW_POSITIVES = 10  # a class with fewer test positives than this gets a note on its wide interval


def num(value: Any, digits: int = 3) -> str:
    """A number as the card prints it (3 decimals), ``–`` for none."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def ci(interval: list[float] | None) -> str:
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "[–]"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; ``|`` in a cell is escaped."""
    def cell(value: Any) -> str:
        return num(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def not_measured(command: str) -> str:
    return f"Not measured: run `{command}`.\n"


def read_optional(path: Path, what: str) -> Any:
    """A JSON output of another command, None when it is not there."""
    return read_json(path, what, missing_ok=True)


# --- sections ----------------------------------------------------------------------------------------------
def model_section(meta: dict[str, Any], cfg: Config, checkpoint: str) -> str:
    m = cfg.model
    thresholds = ", ".join(f"{c} {t:.3f}" for c, t in zip(meta["classes"], meta.get("thresholds") or []))
    rows = [["encoder", f"{m.encoder} {m.encoder_kwargs or ''} at {cfg.data.image_size} px, patch grid "
                        f"{'x'.join(map(str, meta.get('grid') or []))}"],
            ["decoder", f"{m.decoder_layers} layers, width {m.decoder_dim}, {m.decoder_heads} heads, head {m.head}"],
            ["class queries", f"text encoder {m.text_encoder}" if meta.get("text_embeddings") else "learned"],
            ["classes", ", ".join(meta["classes"])],
            ["checkpoint", f"{checkpoint}: epoch {meta.get('epoch')}, val macro AUC {num(meta.get('val_auc'))}"],
            ["thresholds", f"{thresholds or 'none stored (0.5)'}; chosen on {meta.get('thresholds_chosen_on', 'val')} "
                           f"by {meta.get('threshold_metric', 'mcc')}"],
            ["output", "per class a probability and a cross-attention map over the patch grid (each sums to 1)"],
            ["intended use", "research on explanation-guided training; not a medical device, not for diagnosis"]]
    return md_table(["", ""], rows)


def data_section(meta: dict[str, Any], cfg: Config) -> str:
    caches = [Path(p) for p in (meta.get("data_sources") or [meta.get("data") or data_paths(cfg.data.path)[0]])]
    out = []
    for cache in caches:
        try:
            manifest = read_manifest(cache)
        except UserError:
            out.append(f"### {cache}\n\nNot measured: the cache is not here (prepare it with `hegl prepare`, or "
                       "write the card where it is).\n")
            continue
        out.append(f"### {cache}\n\n" + manifest_facts(manifest) + class_counts(manifest))
    return "\n".join(out)


def manifest_facts(manifest: dict[str, Any]) -> str:
    sources = manifest.get("source") or {}
    source = "; ".join(f"{name}: {v.get('images', v) if isinstance(v, dict) else v}" for name, v in sources.items()) \
        if isinstance(sources, dict) else str(sources)
    read = manifest.get("intensity") or {}
    policy = {k: manifest[k] for k in ("label_fusion", "mask_source", "patient_overlap") if manifest.get(k) is not None}
    prepared = manifest.get("prepared_with") or {}
    if prepared.get("class_map"):
        policy["class_map"] = prepared["class_map"]
    if prepared.get("views"):
        policy["views"] = prepared["views"]
    rows = [["format", manifest.get("format")], ["sources", source or "–"],
            ["image size", f"{manifest.get('image_size')} px"],
            ["images read by", f"intensity rule {read.get('rule', 1)}, {read.get('mode', '–')}, frames "
                               f"{read.get('frames', '–')}, containers "
                               + (", ".join(CONTAINER_NAMES.get(c, str(c)) for c in read.get("containers") or [])
                                  or "not recorded")],
            ["label policy", ", ".join(f"{k} {v}" for k, v in policy.items()) or "not recorded in the manifest"],
            ["split", f"seed {manifest.get('seed')}, val fraction {manifest.get('val_fraction')}"],
            ["skipped at prepare", manifest.get("skipped", "–")]]
    return md_table(["", ""], rows)


def class_counts(manifest: dict[str, Any]) -> str:
    splits = list(manifest.get("splits") or {})
    counts, masks = manifest.get("class_counts") or {}, manifest.get("mask_counts") or {}
    rows = [[name, *[f"{counts.get(s, {}).get(name, 0)} / {masks.get(s, {}).get(name, 0)}" for s in splits]]
            for name in manifest.get("classes", [])]
    rows.append(["images", *[manifest["splits"][s] for s in splits]])
    return ("\nImages with each finding / with an expert mask for it, per split:\n\n"
            + md_table(["class", *splits], rows))


def recipe_section(cfg: Config) -> str:
    loss, train = cfg.loss, cfg.train
    rows = [["loss", f"CE + alpha HA + beta DAL: alpha {loss.alpha:g}, beta {loss.beta:g}, HA {loss.ha_type} on "
                     f"{loss.ha_layers} layer(s), weighting {loss.weighting}"],
            ["optimiser", f"AdamW, lr {train.lr:g}, batch {train.batch_size}, up to {train.epochs} epochs, "
                          f"selection on {train.select_on}"],
            ["augmentation", f"{cfg.data.augment}"], ["seed", train.seed]]
    config = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    return md_table(["", ""], rows) + f"\n<details><summary>The resolved config</summary>\n\n```yaml\n{config}```\n\n</details>\n"


def metrics_section(report: dict[str, Any] | None, run: Path) -> str:
    if report is None:
        return not_measured(f"hegl evaluate {run}")
    m, interval = report["macro"], report.get("macro_ci95") or {}
    rows = [[name, r["auc"], r["f1"], r["mcc"], r["threshold"], r["positives"], r["n"]]
            for name, r in report["per_class"].items()]
    return (f"{report['split']} split of `{report['data']}`: {report['images']} images, {report['checkpoint']} "
            f"checkpoint; thresholds: {report['thresholds']['chosen_on']}.\n\n"
            f"- Macro AUC {num(m['auc'])} {ci(interval.get('auc'))}\n- Macro F1 {num(m['f1'])} {ci(interval.get('f1'))}\n"
            f"- Macro MCC {num(m['mcc'])} {ci(interval.get('mcc'))}\n\n({report.get('ci_method', '95% bootstrap intervals over images')}; "
            f"{report.get('macro_rule', '')})\n\n"
            + md_table(["class", "AUC", "F1", "MCC", "threshold", "positives", "n"], rows))


def calibration_section(report: dict[str, Any] | None, folder: RunFolder, card: Path) -> str:
    calibration = (report or {}).get("calibration")
    if not calibration:
        return not_measured(f"hegl evaluate {folder.path}")
    rows = [[name, c["pairs"], c["brier"], c["ece"]] for name, c in calibration["per_class"].items()]
    rows.append(["all pairs", calibration["pairs"], calibration["brier"], calibration["ece"]])
    out = f"ECE {num(calibration['ece'])}, Brier {num(calibration['brier'])} over {calibration['pairs']} known " \
          f"(image, class) pairs of the {report['split']} split ({calibration.get('bins', 10)} equal-width bins).\n\n"
    out += md_table(["class", "known pairs", "Brier", "ECE"], rows)
    picture = folder.eval_reliability(report["split"])
    if picture.is_file():
        out += f"\n![reliability diagram]({link(picture, card)})\n"
    return out + recalibrations(folder)


def recalibrations(folder: RunFolder) -> str:
    """Every site recalibration of the run: ECE, Brier, F1, MCC before and after on the site's test."""
    rows = []
    for path in folder.recalibration_reports("test"):
        r = read_optional(path, "recalibration report") or {}
        if "before" not in r:
            continue
        b, a = r["before"]["macro"], r["after"]["macro"]
        rows.append([r["data"], r["method"], r["images"], f"{num(b['ece'])} -> {num(a['ece'])}",
                     f"{num(b['brier'])} -> {num(a['brier'])}", f"{num(b['f1'])} -> {num(a['f1'])}",
                     f"{num(b['mcc'])} -> {num(a['mcc'])}"])
    if not rows:
        return ("\nNo site recalibration: `hegl evaluate RUN --data SITE_CACHE --recalibrate` fits one on a site's "
                "val split.\n")
    return ("\nRecalibrated at other sites (fitted on each site's val, scored on its test; before -> after):\n\n"
            + md_table(["site", "method", "test images", "ECE", "Brier", "macro F1", "macro MCC"], rows))


def subgroups_section(report: dict[str, Any] | None, run: Path) -> str:
    if report is None:
        return not_measured(f"hegl evaluate {run}")
    groups = report.get("subgroups") or {}
    if not groups:
        return (f"No subgroup was scored: the {report['split']} split has no metadata column (sex, age, view, site) "
                f"with two or more groups of at least {MIN_GROUP} images.\n")
    out = []
    for column, entry in groups.items():
        rows = [[g, v["images"], v["macro_auc"], ci(v["macro_auc_ci95"])] for g, v in entry["groups"].items()]
        out.append(f"By {column} (gap between best and worst group {num(entry['gap'])}):\n\n"
                   + md_table([column, "images", "macro AUC", "95% CI"], rows))
    return "\n".join(out)


def shortcut_section(report: dict[str, Any] | None, run: Path) -> str:
    faith = (report or {}).get("faithfulness")
    if not faith:
        return not_measured(f"hegl evaluate {run}").replace(".\n", " (faithfulness on, the default).\n")
    rows = []
    a = faith.get("context_audit")
    if a:
        rows.append(["context reliance (mean |p(x) - p(x')|, context from a finding-free image)",
                     a["context_reliance"], a["context_reliance_chance"], f"{a['images']} images"])
        if "lesion_necessity" in a:
            rows.append(["lesion necessity (mean p(x) - p(x''), the finding's region replaced)",
                         a["lesion_necessity"], a["lesion_necessity_chance"], f"{a.get('pairs', 0)} positive pairs"])
    s = faith.get("shortcut_reliance")
    if s:
        rows.append([f"twin shortcut reliance (mean |p(x) - p(twin)|, split {s.get('counterfactual_split')})",
                     s["mean"], "–", f"{s.get('images')} images"])
    if faith.get("pairs"):
        rows.append(["deletion AUC of the attention (lower: more faithful)", faith["deletion_attention"],
                     faith["deletion_random"], f"{faith['pairs']} positive pairs"])
        rows.append(["insertion AUC of the attention (higher: more faithful)", faith["insertion_attention"],
                     faith["insertion_random"], f"{faith['pairs']} positive pairs"])
    if not rows:
        return "The test split has no expert mask and no twin: no shortcut audit could run.\n"
    out = md_table(["measure", "value", "chance (random region / order)", "over"], rows)
    if not a:
        out += "\nContext reliance and lesion necessity: not measured (the split has no expert masks).\n"
    if not s:
        out += "\nTwin reliance: not measured (the data has no counterfactual twin split).\n"
    return out


def methods_section(report: dict[str, Any] | None, run: Path) -> str:
    section = ((report or {}).get("methods") or {}).get("methods")
    if not section:
        return not_measured(f"hegl evaluate {run} --methods all")
    sanity = ((report.get("sanity") or {}).get("methods")) or {}
    rows, faithful = [], []
    for name, r in section.items():
        s = sanity.get(name) or {}
        ok = (r.get("deletion_gain") or 0) > 0 and (r.get("insertion_gain") or 0) > 0 and not s.get("flagged")
        faithful += [name] if ok else []
        rows.append([name, r["pointing_game"], r["energy_in_mask"], r["deletion_gain"], r["insertion_gain"],
                     s.get("final_similarity"), "yes" if s.get("flagged") else ("no" if s else "–"),
                     "yes" if ok else "no"])
    return (f"Faithful here: {', '.join(faithful) or 'none'} (rule: deletion gain > 0 and insertion gain > 0 against "
            "a random patch order, and not flagged by the randomisation sanity check).\n\n"
            + md_table(["method", "pointing game", "energy in mask", "deletion gain", "insertion gain",
                        "similarity after randomisation", "flagged", "faithful"], rows))


def robustness_section(folder: RunFolder) -> str:
    data = read_optional(robustness_files(folder.path)[0], "robustness record")
    if not data or not data.get("records"):
        return not_measured(f"hegl robustness {folder.path}")
    rows = [[r["run"], r["sigma"], r["draws"], *((r.get(k) or {}).get("mean") for k in ("auc", "f1", "mcc"))]
            for r in data["records"]]
    return (f"Clipped Gaussian noise on the [0, 1] intensities of the {data.get('split')} split:\n\n"
            + md_table(["run", "sigma", "draws", "macro AUC", "macro F1", "macro MCC"], rows))


def external_section(folder: RunFolder) -> str:
    rows = []
    for path in folder.external_reports():
        r = read_optional(path, "evaluation") or {}
        if "macro" not in r:
            continue
        missing = (r.get("not_scored") or {}).get("model_only", [])
        rows.append([r.get("data"), r.get("images"), f"{num(r['macro']['auc'])} {ci((r.get('macro_ci95') or {}).get('auc'))}",
                     ", ".join(r.get("scored_classes", [])), ", ".join(missing) or "none"])
    if not rows:
        return not_measured(f"hegl evaluate {folder.path} --data OTHER_SITE_CACHE")
    return md_table(["site", "images", "macro AUC [95% CI]", "scored", "model classes not scored"], rows)


def limits_section(report: dict[str, Any] | None, meta: dict[str, Any], folder: RunFolder) -> str:
    lines = ["Not a medical device. The thresholds were chosen on the training data's own val split; at another "
             "site re-fit them (`hegl evaluate RUN --data SITE --recalibrate`)."]
    if report is not None:
        unscored = [n for n, r in report["per_class"].items() if r["auc"] is None]
        if unscored:
            lines.append(f"Classes not scored on {report['split']} (no positive or no negative there): "
                         f"{', '.join(unscored)}.")
        few = [f"{n} ({r['positives']})" for n, r in report["per_class"].items()
               if r["auc"] is not None and r["positives"] < FEW_POSITIVES]
        if few:
            lines.append(f"Classes with fewer than {FEW_POSITIVES} positive test images (wide intervals): "
                         f"{', '.join(few)}.")
        lines.append(f"Subgroups with fewer than {MIN_GROUP} images are not scored.")
        lines += [f"Warning from the evaluation: {w}" for w in report.get("warnings", [])]
    for path in folder.external_reports():
        r = read_optional(path, "evaluation") or {}
        not_scored = (r.get("not_scored") or {}).get("model_only")
        if not_scored:
            lines.append(f"On {r.get('data')}: {', '.join(not_scored)} not scored (the site has no such class).")
    shift = trained_reading_shift(int(meta.get("intensity_rule", 1)), meta.get("intensity_containers"))
    if shift:
        lines.append(f"Trained on images read under another intensity rule than this hegl's ({shift}): predictions on them "
                     "may shift.")
    return "".join(f"- {line}\n" for line in lines)


def versions_section(meta: dict[str, Any]) -> str:
    v = meta.get("versions") or {}
    rows = [["trained with hegl", v.get("hegl", "not recorded")],
            ["git commit of that hegl", v.get("hegl_commit", "not recorded (a checkpoint from before it was, or "
                                                               "hegl installed from a wheel)")],
            ["torch / timm / python", f"{v.get('torch', '–')} / {v.get('timm', '–')} / {v.get('python', '–')}"],
            ["precision", precision_cell(meta)],
            ["card written by hegl", f"{__version__} (commit {source_commit() or 'unknown'})"]]
    return md_table(["", ""], rows)


def precision_cell(meta: dict[str, Any]) -> str:
    """What the run computed in (asked, in force, where) and the CPU kernels it recorded."""
    record, v = meta.get("precision") or {}, meta.get("versions") or {}
    if not record:
        return "not recorded (a checkpoint from before train.precision: fp32 on a CPU)"
    return (f"{record.get('in_force')} (asked {record.get('asked')}) on {record.get('device')}; CPU kernels ATen "
            f"{v.get('cpu_capability', '–')}, oneDNN {v.get('onednn_max_cpu_isa', '–')}")


def link(path: Path, card: Path) -> str:
    """``path`` as a link from the card's folder (relative where it can be)."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(card).resolve().parent)).as_posix()
    except ValueError:  # another drive on Windows
        return Path(path).resolve().as_posix()


# --- the card ---------------------------------------------------------------------------------------------
def model_card(run: Path, checkpoint: str = "best", card: Path | None = None, exported: str = "") -> str:
    """The Markdown card of ``run`` (``card``: where it will be written, for its links; ``exported``: a
    section on an exported file, from :mod:`hegl_cli.apps.export`)."""
    folder = RunFolder(run)
    meta = load_meta(run, checkpoint)
    cfg = config_from_dict(meta["config"], source=str(folder.meta(checkpoint)))
    report = read_optional(folder.eval_report("test"), "evaluation")
    card = card or folder.model_card
    parts = [f"# Model card: {folder.name}\n",
             f"Written {time.strftime('%Y-%m-%d %H:%M')} by hegl {__version__} from run folder `{folder.path}` "
             f"({checkpoint} checkpoint). Every number is read from the run's own files; a section whose file is missing "
             "says so and names the command that measures it.\n",
             "## Model\n", model_section(meta, cfg, checkpoint)]
    if exported:
        parts += ["## Exported model\n", exported]
    with reading_record(folder.meta(checkpoint), "checkpoint record"):
        parts += ["## Training data\n", data_section(meta, cfg), "## Recipe and config\n", recipe_section(cfg)]
    with reading_record(folder.eval_report("test"), "evaluation"):
        parts += ["## Test metrics\n", metrics_section(report, folder.path),
                  "## Calibration\n", calibration_section(report, folder, card),
                  "## Subgroups\n", subgroups_section(report, folder.path),
                  "## Shortcut audit\n", shortcut_section(report, folder.path),
                  "## Explanation methods: which is faithful\n", methods_section(report, folder.path)]
    with reading_record(robustness_files(folder.path)[0], "robustness record"):
        parts += ["## Robustness under noise\n", robustness_section(folder)]
    with reading_record(folder.path / "eval" / "external", "evaluation at another site"):
        parts += ["## Other sites\n", external_section(folder)]
    with reading_record(folder.eval_report("test"), "evaluation"):
        parts += ["## Known limits\n", limits_section(report, meta, folder), "## Versions\n", versions_section(meta)]
    return "\n".join(parts)


def write_card(run: Path, checkpoint: str = "best") -> Path:
    """Write the run's own card (``RunFolder.model_card``)."""
    folder = RunFolder(run)
    return OutputFolder(folder.path, owned=True).write_text(folder.model_card.name, model_card(run, checkpoint))
