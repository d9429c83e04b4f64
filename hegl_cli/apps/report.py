"""`hegl report`: one self-contained HTML page for runs (and ablations) that a reviewer opens.

Everything is inline (CSS, images as data URIs, no network). Per run: the run and its config; the
data (images and annotated images per class and split); training curves; per-class AUC/F1/MCC
with the macro 95% CI and thresholds; attention alignment and faithfulness next to chance levels;
robustness; shortcut reliance; a gallery of test images with the expert mask outlined beside each
class's map (best aligned, worst aligned, and the most shortcut-driven when the data has a twin).
Several runs get a side-by-side table; an ablation folder its table and figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from hegl_cli import __version__
from hegl_cli.data.labels import annotated_positives
from hegl_cli.data.manifest import counterfactual_split, read_manifest
from hegl_cli.engine.checkpoint import LoadedRun, load_run
from hegl_cli.engine.run_folder import AblationFolder, RunFolder, robustness_files
from hegl_cli.errors import UserError, reading_record
from hegl_cli.fs.outputs import OutputFolder
from hegl_cli.fs.tables import read_json
from hegl_cli.htmlkit import esc, figure_uri, fmt, img, page, png_uri, table
from hegl_cli.models.inference import predict_split
from hegl_cli.plots import draw_heatmap, plot_training_curves, plt, upsample


def read_output(path: Path, what: str, keys: tuple[str, ...] = (), kind: type = dict) -> Any:
    """An earlier command's JSON output, or None when there is none; a damaged one is one line that
    says which command writes it again."""
    value = read_json(path, what, missing_ok=True)
    if value is None:
        return None
    missing = [k for k in keys if not isinstance(value, dict) or k not in value]
    if not isinstance(value, kind) or missing:
        raise UserError(f"{path}: not a hegl {what} (missing {', '.join(repr(k) for k in missing) or 'its contents'}); "
                        "run the command that writes it again")
    return value


# --- sections of one run --------------------------------------------------------------------------
def run_header(loaded: LoadedRun) -> str:
    cfg, meta = loaded.cfg, loaded.meta
    marker = read_output(RunFolder(loaded.folder).marker, "run marker") or {}
    facts = [["run folder", str(loaded.folder)], ["created", marker.get("created", "–")],
             ["checkpoint", f"{loaded.checkpoint} (epoch {meta.get('epoch')}, val macro AUC {fmt(meta.get('val_auc'))})"],
             ["encoder", f"{cfg.model.encoder} {cfg.model.encoder_kwargs or ''} at {cfg.data.image_size} px"],
             ["text encoder", cfg.model.text_encoder], ["loss", f"alpha={cfg.loss.alpha:g} beta={cfg.loss.beta:g} "
                                                              f"({cfg.loss.ha_type}, HA on {cfg.loss.ha_layers} layer(s))"],
             ["training", f"AdamW lr {cfg.train.lr:g}, batch {cfg.train.batch_size}, up to {cfg.train.epochs} epochs, "
                          f"augment {cfg.data.augment}"],
             ["precision", trained_precision(meta, loaded)],
             ["thresholds", f"chosen on {meta.get('thresholds_chosen_on', 'val')} by {meta.get('threshold_metric')}"],
             ["versions", ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items())]]
    config = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    return (table(None, facts, "facts") + "<details><summary>the resolved config</summary>"
            f"<pre>{esc(config)}</pre></details>")


def trained_precision(meta: dict[str, Any], loaded: LoadedRun) -> str:
    """What the run trained in (asked, in force, device) and what this report's forward passes use."""
    record = meta.get("precision") or {}
    trained = (f"trained in {record.get('in_force')} (asked {record.get('asked')}) on {record.get('device')}"
               if record else "trained before hegl recorded precision")
    return f"{trained}; this report computes in {loaded.in_force}"


def data_section(loaded: LoadedRun) -> str:
    manifest = read_manifest(loaded.data)
    splits = [s for s in manifest["splits"] if (loaded.data / s / "has_mask.npy").is_file()]
    masks = {s: np.load(loaded.data / s / "has_mask.npy").sum(0) for s in splits}
    rows = []
    for c, name in enumerate(loaded.classes):
        rows.append([name, *[f"{manifest['class_counts'].get(s, {}).get(name, 0)} / {int(masks[s][c])}" for s in splits]])
    rows.append(["images", *[str(manifest["splits"][s]) for s in splits]])
    return (f"<p class=muted>{esc(loaded.data)} · {esc(manifest.get('format'))} · {manifest.get('image_size')} px · "
            "each cell: images with the finding / images with an expert mask for it</p>"
            + table(["class", *splits], rows))


def training_section(loaded: LoadedRun) -> str:
    folder = RunFolder(loaded.folder)
    history = folder.read_metrics()
    if not history:
        return f"<p class=note>no {esc(folder.metrics.name)}: the run has no finished epoch</p>"
    curves = folder.curves
    if not curves.is_file() and history:
        plot_training_curves(history, curves)
    best = max(history, key=lambda h: h.get("val_auc") or -1) if history else {}
    sources = [k for k in best if k.startswith("val_auc_") and k not in ("val_auc_plain", "val_auc_swapped")]
    per_source = ("" if not sources else "<p>Val macro AUC per source at that epoch (each cache's own val):</p>"
                  + table(["source", "val macro AUC"], [[k[len("val_auc_"):], best[k]] for k in sources]))
    return (f"<p>{len(history)} epoch(s); best val macro AUC {fmt(best.get('val_auc'))} at epoch "
            f"{best.get('epoch', '–')}.</p>" + per_source
            + (img(png_uri(curves), "training curves") if curves.is_file() else ""))


def results_section(report: dict[str, Any] | None) -> str:
    if report is None:
        return "<p class=note>not evaluated yet: run <code>hegl evaluate RUN</code></p>"
    m, ci = report["macro"], report.get("macro_ci95") or {}
    att = report["attention"]["per_class"]
    rows = [[name, r["auc"], r["f1"], r["mcc"], r["threshold"], r["positives"],
             att.get(name, {}).get("energy_in_mask"), att.get(name, {}).get("energy_uniform"),
             att.get(name, {}).get("pointing_game")] for name, r in report["per_class"].items()]
    o = report["attention"]["overall"]
    rows.append(["macro / overall", m["auc"], m["f1"], m["mcc"], "", "", o.get("energy_in_mask"),
                 o.get("energy_uniform"), o.get("pointing_game")])

    def interval(key: str) -> str:
        return f"[{ci[key][0]:.3f}, {ci[key][1]:.3f}]" if ci.get(key) else "–"

    out = (f"<p>{esc(report['split'])} split, {report['images']} images, {esc(report['checkpoint'])} checkpoint; "
           f"thresholds: {esc(report['thresholds']['chosen_on'])}. Macro AUC {fmt(m['auc'])} {interval('auc')}, "
           f"F1 {fmt(m['f1'])} {interval('f1')}, MCC {fmt(m['mcc'])} {interval('mcc')} "
           f"({esc(report.get('ci_method', '95% bootstrap CI'))}).</p>"
           + table(["class", "AUC", "F1", "MCC", "threshold", "positives", "energy in mask", "flat map (chance)",
                    "pointing game"], rows)
           + f"<p class=muted>{esc(report.get('macro_rule', ''))}</p>" + unscored_line(report))
    f = report.get("faithfulness") or {}
    if f.get("pairs"):
        out += "<h3>Faithfulness</h3>" + table(
            ["curve", "attention order", "random order (chance)", "gain"],
            [["deletion AUC (lower is more faithful)", f["deletion_attention"], f["deletion_random"], f["deletion_gain"]],
             ["insertion AUC (higher is more faithful)", f["insertion_attention"], f["insertion_random"],
              f["insertion_gain"]]]) + f"<p class=muted>{f['pairs']} positive (image, class) pairs</p>"
    a = f.get("context_audit")
    if a:
        rows = [["context reliance: mean |p(x) - p(x')|, context from a finding-free image", a["context_reliance"],
                 a["context_reliance_chance"]]]
        if "lesion_necessity" in a:
            rows.append(["lesion necessity: mean p(x) - p(x''), the finding's region replaced", a["lesion_necessity"],
                         a["lesion_necessity_chance"]])
        out += ("<h3>Context audit (from the expert masks, no twin needed)</h3>"
                + table(["", "expert masks", "a random region of the same area (chance)"], rows)
                + f"<p class=muted>{a['images']} images with a mask; {a.get('pairs', 0)} positive pairs</p>")
    s = f.get("shortcut_reliance")
    if s:
        fig, ax = plt.subplots(figsize=(6, 2.6))
        ax.bar(list(s["per_class"]), list(s["per_class"].values()), color="C3")
        ax.set(ylabel="mean |p(x) - p(x')|", title=f"shortcut reliance (mean {s['mean']:.3f})")
        out += "<h3>Shortcut audit</h3>" + img(figure_uri(fig), "shortcut reliance per class")
    return out


def unscored_line(report: dict[str, Any]) -> str:
    """The classes no macro figure of ``report`` covers, each with why (or that none is left out)."""
    reasons = report.get("unscored")
    if reasons is None:  # a report from before the reasons were written
        reasons = dict((report.get("macro") or {}).get("not_scored") or {})
        for key, why in (("model_only", "this site's data does not label it"), ("data_only", "the model has no such class")):
            reasons.update({c: why for c in (report.get("not_scored") or {}).get(key, [])})
    listed = "; ".join(f"{c} ({why})" for c, why in reasons.items())
    return f"<p class=muted>not scored: {esc(listed) if listed else 'none, every class is in the macro'}</p>"


def external_section(folder: Path, home: dict[str, Any] | None) -> str:
    """Home against every other site the run was evaluated on, over the classes both have."""
    reports = [(path.parent.name, read_output(path, "evaluation", ("macro", "per_class", "scored_classes")))
               for path in RunFolder(folder).external_reports()]
    if not reports:
        return ("<p class=muted>not evaluated on another site: <code>hegl evaluate RUN --data OTHER_CACHE</code> "
                "scores the classes both share</p>")
    out = []
    for site, ext in reports:
        scored = ext["scored_classes"]
        home_auc = [((home or {}).get("per_class", {}).get(c) or {}).get("auc") for c in scored]
        in_macro = set(ext["macro"].get("classes", scored))  # the classes the site's macro covers
        known = [a for c, a in zip(scored, home_auc) if a is not None and c in in_macro]
        ci = ext.get("macro_ci95", {}).get("auc")
        rows = [[c, a, (ext["per_class"].get(c) or {}).get("auc")] for c, a in zip(scored, home_auc)]
        rows.append([f"macro (the {len(in_macro)} classes scored here)", float(np.mean(known)) if known else None,
                     ext["macro"]["auc"]])
        out.append(f"<h4>{esc(ext['data'])} ({ext['split']}, {ext['images']} images)</h4>"
                   + table(["class", f"AUC home ({esc(Path(ext.get('home_data', '')).name)})", "AUC this site"], rows)
                   + f"<p class=muted>macro AUC here {fmt(ext['macro']['auc'])}"
                   + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + " over "
                   + f"{len(ext['macro'].get('classes', []))} classes; thresholds from the run's own val</p>"
                   + unscored_line(ext)
                   + calibration_html(ext, RunFolder(folder).eval_files(ext["split"], site)["reliability"]))
    return "".join(out)


def calibration_section(folder: Path, report: dict[str, Any] | None) -> str:
    """Brier score and ECE per class, the reliability diagram, and AUC per subgroup where the data says."""
    calibration = (report or {}).get("calibration")
    if not calibration:
        return "<p class=note>no calibration yet: run <code>hegl evaluate RUN</code></p>"
    return calibration_html(report, RunFolder(folder).eval_reliability(report["split"]))


def calibration_html(report: dict[str, Any], picture: Path) -> str:
    """One evaluation's Brier score and ECE per class, its reliability diagram, and its AUC per subgroup,
    with every group left unscored listed with its size and why."""
    calibration = report.get("calibration")
    if not calibration:
        return ""
    rows = [[name, c["pairs"], c["brier"], c["ece"]] for name, c in calibration["per_class"].items()]
    rows.append(["all pairs", calibration["pairs"], calibration["brier"], calibration["ece"]])
    out = (table(["class", "known pairs", "Brier score", "ECE"], rows)
           + (img(png_uri(picture), "reliability diagram") if picture.is_file() else ""))
    for column, entry in (report.get("subgroups") or {}).items():
        group_rows = [[group, g["images"], g["macro_auc"],
                       f"[{g['macro_auc_ci95'][0]:.3f}, {g['macro_auc_ci95'][1]:.3f}]" if g["macro_auc_ci95"] else "–", ""]
                      for group, g in entry["groups"].items()]
        group_rows += [[group, g["images"], None, "–", f"not scored: {g['reason']}"]
                       for group, g in (entry.get("unscored") or {}).items()]
        if entry.get("without_value"):
            group_rows.append(["(no value)", entry["without_value"], None, "–", "not scored: no value"])
        gap = f"gap {entry['gap']:.3f}" if entry.get("gap") is not None else "fewer than two scored groups"
        out += (f"<h4>By {esc(column)} ({gap})</h4>"
                + table([column, "images", "macro AUC", "95% CI", ""], group_rows))
    return out


def robustness_section(folder: Path) -> str:
    json_path, picture = robustness_files(folder)
    data = read_output(json_path, "robustness record", ("records",))
    if data is None:
        return f"<p class=note>no {esc(json_path.name)}: run <code>hegl robustness RUN</code></p>"
    rows = [[r["run"], r["sigma"], *(r[k]["mean"] if r.get(k) else None for k in ("auc", "f1", "mcc", "energy_in_mask"))]
            for r in data["records"]]
    return (table(["run", "sigma", "AUC", "F1", "MCC", "energy in mask"], rows)
            + (img(png_uri(picture), "robustness curves") if picture.is_file() else ""))


def _case_figure(image: np.ndarray, masks: np.ndarray, attention: np.ndarray, classes: list[str], probs: np.ndarray,
                 thresholds: np.ndarray, focus: int, title: str) -> str:
    heat = upsample(attention.astype(np.float32), image.shape[0])
    fig, axes = plt.subplots(1, len(classes) + 1, figsize=(2.3 * (len(classes) + 1), 2.6))
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=1)
    if masks[focus].any():
        axes[0].contour(masks[focus], levels=[0.5], colors="lime", linewidths=1)
    axes[0].set_title(title, fontsize=9)
    axes[0].axis("off")
    for ax, c in zip(axes[1:], range(len(classes))):
        mark = "+" if probs[c] >= thresholds[c] else "-"
        draw_heatmap(ax, image, heat[c], f"{classes[c]} {probs[c]:.2f} ({mark})", alpha=0.45,
                     title_color="C3" if c == focus else "black")
        if masks[c].any():
            ax.contour(masks[c], levels=[0.5], colors="lime", linewidths=0.8)
    return figure_uri(fig)


def gallery_section(loaded: LoadedRun, per_kind: int) -> str:
    """Test images with the expert mask outlined (green) beside every class map."""
    from hegl_cli.evaluation.alignment import energy_in_mask, patch_coverage

    split = loaded.split
    if split is None or len(split) == 0 or per_kind <= 0:
        return "<p class=note>no test images to show</p>"
    preds = predict_split(loaded.model, split, loaded.device, loaded.cfg.eval.batch_size, precision=loaded.in_force)
    pairs = np.argwhere(annotated_positives(split.labels, split.has_mask))
    energy = np.array([float(energy_in_mask(preds.attention[i, c][None], patch_coverage(split.masks(i)[c][None],
                                                                                        preds.attention.shape[-2:]))[0])
                       for i, c in pairs]) if len(pairs) else np.zeros(0)
    order = np.argsort(-energy, kind="stable")
    kinds: list[tuple[str, list[tuple[int, int, str]]]] = [
        ("Best aligned (attention energy inside the expert mask)",
         [(int(pairs[k][0]), int(pairs[k][1]), f"energy {energy[k]:.2f}") for k in order[:per_kind]]),
        ("Worst aligned", [(int(pairs[k][0]), int(pairs[k][1]), f"energy {energy[k]:.2f}")
                           for k in order[::-1][:per_kind]])]
    twin_name = counterfactual_split(split.manifest, split.split)
    if twin_name:
        with load_run(loaded.folder, loaded.checkpoint, loaded.data, str(loaded.device), twin_name) as twin:
            twin_preds = predict_split(twin.model, twin.split, twin.device, loaded.cfg.eval.batch_size,
                                       precision=twin.in_force)
        diff = np.abs(preds.probs - twin_preds.probs)  # (N, C)
        flat = np.argsort(-diff.reshape(-1), kind="stable")[:per_kind]
        kinds.append(("Most shortcut-driven (probability moves when only the shortcut is toggled)",
                      [(int(k // diff.shape[1]), int(k % diff.shape[1]), f"|Δp| {diff.flat[k]:.2f}") for k in flat]))
    out = []
    for title, cases in kinds:
        figures = []
        for i, c, note in cases:
            caption = f"{split.files[i]} · {loaded.classes[c]} · {note}"
            uri = _case_figure(split.image(i), split.masks(i), preds.attention[i], loaded.classes, preds.probs[i],
                               loaded.thresholds, c, f"{split.files[i]}")
            figures.append(f"<figure>{img(uri, caption)}<figcaption>{esc(caption)}</figcaption></figure>")
        out.append(f"<h3>{esc(title)}</h3>" + (f"<div class=gallery>{''.join(figures)}</div>" if figures
                                                   else "<p class=muted>none</p>"))
    return "".join(out)


def methods_section(loaded: LoadedRun, report: dict[str, Any] | None, per_kind: int) -> str:
    """The explanation methods of ``hegl evaluate --methods``: one table (aligned? faithful? does it
    depend on the model?), the figure, and the methods side by side on the same test images."""
    section = (report or {}).get("methods") or {}
    if not section.get("methods"):
        return ("<p class=note>only the class attention was scored: <code>hegl evaluate RUN --methods all</code> "
                "scores Grad-CAM, rollout, integrated gradients and the others beside it</p>")
    sanity = (report.get("sanity") or {}).get("methods", {})
    rows = [[m, r["pointing_game"], r["energy_in_mask"], r["energy_uniform"], r["dice_pixel"], r["deletion_gain"],
             r["insertion_gain"], (sanity.get(m) or {}).get("final_similarity"),
             "flagged" if (sanity.get(m) or {}).get("flagged") else "", r["seconds_per_image"]]
            for m, r in section["methods"].items()]
    out = table(["method", "pointing game", "energy in mask", "flat map", "Dice (pixels)", "deletion gain",
                 "insertion gain", "similarity after randomisation", "sanity", "s / image"], rows)
    out += (f"<p class=muted>{section['pairs']} positive (image, class) pairs with a mask, the same for every "
            f"method; deletion/insertion against a random order, baseline {esc(section['baseline'])}, one patch per "
            "step; similarity: Spearman rank correlation with the trained model's maps once every parameter is "
            "random (flagged: the map does not depend on the model).</p>")
    figure = RunFolder(loaded.folder).eval_files(report["split"])["methods_figure"]
    if figure.is_file():
        out += img(png_uri(figure), "explanation methods")
    return out + _methods_gallery(loaded, list(section["methods"]), per_kind)


def _methods_gallery(loaded: LoadedRun, methods: list[str], per_kind: int) -> str:
    """A row per (image, positive class): the image with its mask outlined, then every method's map."""
    from hegl_cli.evaluation.methods import method_pairs
    from hegl_cli.models.explainers import explain_batch

    split = loaded.split
    if split is None or per_kind <= 0:
        return ""
    pairs = method_pairs(split.labels, split.has_mask, per_kind)
    figures = []
    for i, c in pairs:
        image = torch.from_numpy(split.image(int(i)))[None, None]
        maps = {m: explain_batch(loaded.model, image, [int(c)], m).patch[0, 0].numpy() for m in methods}
        fig, axes = plt.subplots(1, len(methods) + 1, figsize=(2.2 * (len(methods) + 1), 2.5))
        axes[0].imshow(split.image(int(i)), cmap="gray", vmin=0, vmax=1)
        axes[0].contour(split.masks(int(i))[int(c)], levels=[0.5], colors="lime", linewidths=1)
        axes[0].set_title(f"{split.files[int(i)]} · {loaded.classes[int(c)]}", fontsize=8)
        axes[0].axis("off")
        for ax, m in zip(axes[1:], methods):
            draw_heatmap(ax, split.image(int(i)), upsample(maps[m][None].astype(np.float32), split.image_size)[0], m,
                         alpha=0.45)
            ax.contour(split.masks(int(i))[int(c)], levels=[0.5], colors="lime", linewidths=0.8)
        caption = f"{split.files[int(i)]} · {loaded.classes[int(c)]}: every method, the same image"
        figures.append(f"<figure>{img(figure_uri(fig), caption)}<figcaption>{esc(caption)}</figcaption></figure>")
    return "<h3>The methods side by side</h3>" + "".join(figures)


def run_section(folder: Path, checkpoint: str, device: str, per_kind: int, report: dict[str, Any] | None) -> str:
    split = (report or {}).get("split", "test")
    try:
        loaded = load_run(folder, checkpoint, device=device, split=split)
    except UserError:
        loaded = load_run(folder, checkpoint, device=device)
    run = RunFolder(folder)
    with loaded:
        parts = [f"<h2 id='{esc(folder.name)}'>Run {esc(folder.name)}</h2>", run_header(loaded),
                 "<h3>Data</h3>", data_section(loaded), "<h3>Training</h3>", training_section(loaded)]
        with reading_record(run.eval_report(split), "evaluation"):
            parts += ["<h3>Results</h3>", results_section(report),
                      "<h3>Explanation methods</h3>", methods_section(loaded, report, per_kind),
                      "<h3>Calibration and subgroups</h3>", calibration_section(folder, report)]
        with reading_record(folder / "eval" / "external", "evaluation at another site"):
            parts += ["<h3>External validation: other sites</h3>", external_section(folder, report)]
        with reading_record(robustness_files(folder)[0], "robustness record"):
            parts += ["<h3>Robustness under Gaussian noise</h3>", robustness_section(folder)]
        parts += ["<h3>Gallery</h3>", gallery_section(loaded, per_kind)]
    return "".join(parts)


def unfinished_runs(folder: AblationFolder) -> list[str]:
    """The planned (cell, seed) runs of an ablation that have not finished; an ablation from before the
    plan was recorded is finished when its results table is there."""
    plan = read_output(folder.plan_json, "ablation plan", ("runs",))
    if plan is None:
        return [] if folder.results_md.is_file() else ["(every run: no results table yet)"]
    runs = plan["runs"]
    if not isinstance(runs, list) or not all(isinstance(r, str) for r in runs):
        raise UserError(f"{folder.plan_json}: not a hegl ablation plan (damaged); run the ablation again")
    missing = [r for r in runs if not folder.run(r).cell.is_file()]
    return missing or ([] if folder.results_md.is_file() else ["(the results table)"])


def finished_rows_section(folder: AblationFolder, missing: list[str]) -> str:
    """What an unfinished ablation has: each finished run's numbers, and what is missing."""
    rows = []
    for cell_file in sorted(folder.runs_dir.glob("*/cell.json")):
        row = read_output(cell_file, "ablation cell record", ("cell", "seed", "auc"))
        rows.append([row.get("label", row["cell"]), row["seed"], row["auc"], row.get("auc_noise")])
    return (f"<h2>Ablation {esc(folder.name)} (unfinished)</h2><p class=note>{len(missing)} planned run(s) have "
            f"not finished: {esc(', '.join(missing))}. Run the same `hegl ablation` again to finish them.</p>"
            + table(["cell", "seed", "test AUC", "AUC under noise"], rows))


def ablation_section(path: Path, partial: bool = False) -> str:
    """The ablation's table and figures; an unfinished one is refused in one line, or with ``partial``
    shown as far as it finished (and said so)."""
    folder = AblationFolder(path)
    missing = unfinished_runs(folder)
    if missing and not partial:
        raise UserError(f"{path}: the ablation is unfinished ({len(missing)} planned run(s) missing: "
                        f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}); run the same `hegl ablation` "
                        "again to finish it (finished runs are kept), or pass --partial to report what finished")
    if missing:
        with reading_record(folder.runs_dir, "ablation cell record"):
            return finished_rows_section(folder, missing)
    rows = read_output(folder.runs_json, "ablation record", kind=list) or []
    table_md = folder.results_md.read_text() if folder.results_md.is_file() else ""
    lines = [line for line in table_md.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    body = table(cells[0], cells[2:]) if len(cells) > 2 else f"<p class=note>no {esc(folder.results_md.name)}</p>"
    pictures = [(folder.results_png, "ablation figure"),
                (folder.context_vs_twin, "context reliance against twin shortcut reliance, every run")]
    return (f"<h2>Ablation {esc(path.name)}</h2><p>{len(rows)} run(s) (mean ± std over seeds).</p>" + body
            + "".join(img(png_uri(path), alt) for path, alt in pictures if path.is_file())
            + selection_section(folder))


def selection_section(folder: AblationFolder) -> str:
    with reading_record(folder.selection_json, "recipe selection"):
        return _selection_html(folder)


def _selection_html(folder: AblationFolder) -> str:
    """``--select``'s choice: every recipe's criterion and test AUC, the pick, the regret, the picture."""
    record = read_output(folder.selection_json, "recipe selection", kind=dict)
    if not record:
        return ""
    lines = [line for line in folder.selection_md.read_text().splitlines() if line.startswith("|")] \
        if folder.selection_md.is_file() else []
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    reg = record.get("regret") or {}
    return (f"<h3>Recipe selection: {esc(record.get('recipe', '?'))}</h3><p>{esc(record.get('statement', ''))} "
            f"Criterion: {esc(record.get('description', ''))}. Chosen run: {esc(record.get('run', '?'))}. Regret "
            f"against the best candidate by test AUC: {fmt(reg.get('regret'))}.</p>"
            + (table(cells[0], cells[2:]) if len(cells) > 2 else "")
            + (img(png_uri(folder.selection_png), "criterion against test AUC, every run")
               if folder.selection_png.is_file() else ""))


def is_ablation(folder: Path) -> bool:
    return AblationFolder(folder).is_ours()


def comparison(runs: list[tuple[Path, dict[str, Any] | None, dict[str, Any]]]) -> str:
    rows = []
    for folder, report, meta in runs:
        m = (report or {}).get("macro", {})
        att = ((report or {}).get("attention") or {}).get("overall", {})
        reliance = (((report or {}).get("faithfulness") or {}).get("shortcut_reliance") or {}).get("mean")
        rows.append([folder.name, meta.get("epoch"), meta.get("val_auc"), m.get("auc"), m.get("f1"), m.get("mcc"),
                     att.get("energy_in_mask"), reliance])
    return "<h2>Runs side by side</h2>" + table(
        ["run", "epoch", "val AUC", "test AUC", "test F1", "test MCC", "energy in mask", "shortcut reliance"], rows)


def is_hegl_report(path: Path) -> bool:
    """A page `hegl report` wrote (its title says so)."""
    try:
        return path.is_file() and "<title>hegl report" in path.read_text(errors="replace")[:2000]
    except OSError:
        return False


def build_report(targets: list[Path], out: Path | None = None, checkpoint: str = "best", device: str = "auto",
                 per_kind: int = 3, log: Callable[[str], None] = lambda *_: None, force: bool = False,
                 partial: bool = False) -> Path:
    """Write one self-contained HTML page for ``targets`` (run or ablation folders) to ``out`` (default:
    the first run's report page). A file at ``out`` that hegl did not write is never replaced; ``force``
    replaces a report hegl wrote there. Nothing is computed before that is checked."""
    if out is None:
        folder, name = OutputFolder(RunFolder(targets[0]).path, owned=True), RunFolder(targets[0]).report.name
    else:
        folder, name = OutputFolder(Path(out).parent, force=force, recognise=is_hegl_report, kind="report"), Path(out).name
    folder.claim([name])
    from hegl_cli.engine.checkpoint import load_meta

    sections, runs = [], []
    for target in targets:
        if is_ablation(target):
            log(f"ablation {target}")
            sections.append(ablation_section(target, partial))
            continue
        report = read_output(RunFolder(target).eval_report("test"), "evaluation",
                             ("macro", "per_class", "attention", "split", "images"))
        runs.append((target, report, load_meta(target, checkpoint)))
        log(f"run {target}")
        sections.append(run_section(target, checkpoint, device, per_kind, report))
    with reading_record(", ".join(str(RunFolder(t).eval_report("test")) for t, _, _ in runs), "evaluation"):
        head = comparison(runs) if len(runs) > 1 else ""
    title = "hegl report: " + ", ".join(t.name for t in targets)
    made = f"made by hegl {__version__} on {time.strftime('%Y-%m-%d %H:%M')}; self-contained (no network)"
    return folder.write_text(name, page(title, made, head + "".join(sections)))
