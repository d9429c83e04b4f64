"""`hegl evaluate`: metrics, confidence intervals, attention alignment and faithfulness of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from hegl_cli.cli.common import (
    CheckpointOpt,
    ConfigOpt,
    DeviceOpt,
    RunsDirOpt,
    SetOpt,
    cell,
    choice_option,
    eval_layers,
    handles_errors,
    info,
    out,
    result_line,
)
from hegl_cli.config import CALIBRATION_METHODS, THRESHOLD_METRICS
from hegl_cli.engine.run_folder import RUNS_DIR


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


@handles_errors
def evaluate(
    run: Annotated[Path | None, typer.Argument(help="Run folder (default: runs/latest).")] = None,
    split: Annotated[str, typer.Option(help="test | val (or any split of the cache).")] = "test",
    checkpoint: CheckpointOpt = "best",
    data: Annotated[Path | None, typer.Option(help="Prepared cache (default: the one the run trained on).")] = None,
    threshold_metric: Annotated[str | None, choice_option(
        "threshold metric", THRESHOLD_METRICS, "Re-choose the thresholds on val by this metric.")] = None,
    faithfulness: Annotated[bool, typer.Option(help="Deletion/insertion curves and shortcut reliance.")] = True,
    device: DeviceOpt = "auto",
    runs_dir: RunsDirOpt = RUNS_DIR,
    methods: Annotated[str | None, typer.Option(help="Score these explanation methods side by side, comma-separated "
                                                     "(attention, rollout, gradcam, hirescam, ig, saliency, "
                                                     "occlusion, attention-heads, attention-layers, or all).")] = None,
    sanity: Annotated[bool, typer.Option(help="--methods: also the cascading randomisation sanity check.")] = True,
    recalibrate: Annotated[bool, typer.Option("--recalibrate", help="Fit a calibration and thresholds on the --data "
                                              "site's val split; score before/after on --split.")] = False,
    calibration_method: Annotated[str, choice_option("calibration method", CALIBRATION_METHODS,
                                                     "--recalibrate: per-class fit.")] = "temperature",
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Per-class and macro AUC/F1/MCC (95% bootstrap CI), attention alignment, faithfulness.

    --config/--set may change eval.* keys (bootstrap, top_share, faithfulness_images, ...).
    --recalibrate --data SITE fits the site's calibration on its val split only and writes
    RUN/eval/external/<site>/calibration.json for `hegl predict/export --calibration`.
    """
    from hegl_cli.apps.evaluate import evaluate_run
    from hegl_cli.engine.run_folder import RunFolder, resolve_run
    from hegl_cli.models.explainers import parse_methods

    chosen = parse_methods(methods, "--methods") if methods is not None else None
    folder = resolve_run(run, runs_dir)
    if recalibrate:
        from hegl_cli.apps.recalibrate import recalibrate_run

        report, files = recalibrate_run(folder, data, checkpoint, calibration_method, threshold_metric, split, device,
                                        eval_layers(config, overrides))
        for line in report.get("warnings", []):
            info(f"warning: {line}", style="yellow")
        print_recalibration(report)
        info(f"wrote {files['calibration']} and {files['report'].name}")
        return
    report = evaluate_run(folder, split, checkpoint, data, threshold_metric, faithfulness, device,
                          eval_layers(config, overrides), methods=chosen, sanity=sanity, log=info)
    for line in report.get("warnings", []):
        info(f"warning: {line}", style="yellow")
    print_evaluation(report)
    site = report.get("site")
    files = RunFolder(folder).eval_files(split, site)
    print_scored(report)
    print_calibration(report, files["reliability"])
    print_subgroups(report)
    if report.get("methods"):
        print_methods(report)
    info(f"wrote {files['report']} and {files['table'].name}"
         + (f", {files['methods_table'].name} and {files['methods_figure'].name}" if report.get("methods", {}).get("methods") else ""))


def print_methods(report: dict) -> None:
    """One row per explanation method: is it aligned, is it faithful, does it depend on the model?"""
    section = report["methods"]
    if not section.get("methods"):
        info(section.get("note", "no explanation method scored"))
        return
    sanity = (report.get("sanity") or {}).get("methods", {})
    table = Table(title=Text(f"explanation methods on {section['pairs']} positive pairs with a mask "
                             f"(deletion baseline {section['baseline']}, one patch per step)"))
    for col in ("method", "pointing", "energy", "flat map", "Dice px", "deletion gain", "insertion gain",
                "sanity sim.", "s/image"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name, row in section["methods"].items():
        s = sanity.get(name, {})
        sim = "-" if not s else f"{s['final_similarity']:.2f}" + (" FLAG" if s["flagged"] else "")
        table.add_row(cell(name), _fmt(row["pointing_game"]), _fmt(row["energy_in_mask"]), _fmt(row["energy_uniform"]),
                      _fmt(row["dice_pixel"]), _fmt(row["deletion_gain"]), _fmt(row["insertion_gain"]), sim,
                      f"{row['seconds_per_image']:.3f}")
    out.print(table)
    if sanity:
        result_line("sanity sim.: Spearman similarity to the trained model's maps once every parameter is random "
                    f"(FLAG at >= {report['sanity']['survives_at']}: the map does not depend on the model)")


def print_evaluation(report: dict) -> None:
    title = f"{report['run']} · {report['split']} ({report['images']} images) · {report['checkpoint']}"
    table = Table(title=Text(title))
    for col in ("class", "AUC", "F1", "MCC", "thr", "pos", "pointing", "energy", "Dice"):
        table.add_column(col, justify="right" if col != "class" else "left")
    att = report["attention"]["per_class"]
    for name, row in report["per_class"].items():
        a = att.get(name, {})
        table.add_row(cell(name), _fmt(row["auc"]), _fmt(row["f1"]), _fmt(row["mcc"]), _fmt(row["threshold"]),
                      str(row["positives"]), _fmt(a.get("pointing_game")), _fmt(a.get("energy_in_mask")), _fmt(a.get("dice")))
    m, ci, o = report["macro"], report["macro_ci95"], report["attention"]["overall"]

    def with_ci(key: str) -> str:
        return f"{_fmt(m[key])} [{_fmt(ci[key][0])}, {_fmt(ci[key][1])}]" if ci.get(key) else _fmt(m[key])

    table.add_row(Text("macro", style="bold"), _fmt(m["auc"]), _fmt(m["f1"]), _fmt(m["mcc"]), "", "",
                  _fmt(o["pointing_game"]), _fmt(o["energy_in_mask"]), _fmt(o["dice"]))
    out.print(table)
    if o.get("energy_uniform") is not None:
        result_line(f"attention energy in mask {_fmt(o['energy_in_mask'])} (a flat map: {_fmt(o['energy_uniform'])}), "
                    f"pointing game {_fmt(o['pointing_game'])} over {o['pairs']} positive pairs with a mask")
    if o.get("effective_patches") is not None:
        result_line(f"map spread: {o['effective_patches']:.1f} effective patches per map, its mask touches "
                    f"{o['mask_patches']:.1f} (" + ", ".join(
                        f"{k} {v['effective_patches']:.1f}/{v['mask_patches']:.1f}" for k, v in att.items()
                        if v.get("effective_patches") is not None) + ")")
    result_line(f"macro AUC {with_ci('auc')}   F1 {with_ci('f1')}   MCC {with_ci('mcc')}   "
                f"(over {len(m.get('classes', []))} classes with positives and negatives in the split)")
    result_line(f"intervals: {report.get('ci_method', '95% bootstrap CI')}")
    f = report.get("faithfulness") or {}
    if f.get("pairs"):
        result_line(f"faithfulness ({f['pairs']} positive pairs): deletion AUC {f['deletion_attention']:.3f} "
                    f"(random {f['deletion_random']:.3f}), insertion AUC {f['insertion_attention']:.3f} "
                    f"(random {f['insertion_random']:.3f})")
    a = f.get("context_audit")
    if a:
        line = (f"context reliance {a['context_reliance']:.3f} (a random region: {a['context_reliance_chance']:.3f})")
        if "lesion_necessity" in a:
            line += (f", lesion necessity {a['lesion_necessity']:.3f} (a random region: "
                     f"{a['lesion_necessity_chance']:.3f}) over {a['pairs']} positive pairs with a mask")
        result_line(line)
    if f.get("shortcut_reliance"):
        s = f["shortcut_reliance"]
        per = ", ".join(f"{k} {v:.3f}" for k, v in s["per_class"].items())
        result_line(f"shortcut reliance: mean |p(x) - p(twin: every cue toggled)| = {s['mean']:.3f}  ({per})")


def print_scored(report: dict) -> None:
    """Which classes the macro figures cover, and every class they leave out with the reason."""
    scored = report["macro"].get("classes", [])
    reasons = report.get("unscored") or {}
    where = f" on {report['data']}" if report.get("site") is not None else ""
    result_line(f"scored{where}: {', '.join(scored) or 'no class'}; not scored: "
                + ("; ".join(f"{c} ({why})" for c, why in reasons.items()) if reasons else "none"))


def print_calibration(report: dict, diagram: Path) -> None:
    """ECE and Brier score over the known pairs, and the reliability diagram as a table (and its file)."""
    c = report.get("calibration") or {}
    if not c.get("pairs"):
        return
    table = Table(title=Text(f"reliability: ECE {_fmt(c['ece'])}, Brier {_fmt(c['brier'])} over {c['pairs']} known "
                             f"(image, class) pairs"))
    for col in ("predicted p", "pairs", "mean p", "share positive", "gap"):
        table.add_column(col, justify="right")
    for b in c["curve"]:
        table.add_row(f"{b['bin'][0]:.1f}-{b['bin'][1]:.1f}", str(b["pairs"]), _fmt(b["mean_probability"]),
                      _fmt(b["positive_share"]), _fmt(b["positive_share"] - b["mean_probability"]))
    out.print(table)
    if diagram.is_file():
        result_line(f"reliability diagram: {diagram}")


def print_subgroups(report: dict) -> None:
    """Per metadata column: each group's macro AUC with its interval and size, the gap, and every group
    left unscored with its size and why."""
    for column, entry in (report.get("subgroups") or {}).items():
        groups = ", ".join(f"{g} {_fmt(v['macro_auc'])}"
                           + (f" [{_fmt(v['macro_auc_ci95'][0])}, {_fmt(v['macro_auc_ci95'][1])}]"
                              if v.get("macro_auc_ci95") else "") + f" (n={v['images']})"
                           for g, v in entry["groups"].items())
        gap = f"gap {_fmt(entry['gap'])}" if entry.get("gap") is not None else "no gap (fewer than two scored groups)"
        left = "; ".join(f"{g} (n={v['images']}: {v['reason']})" for g, v in (entry.get("unscored") or {}).items())
        missing = entry.get("without_value") or 0
        result_line(f"by {column}: {groups or 'no group scored'}; {gap}"
                    + (f"; not scored: {left}" if left else "")
                    + (f"; {missing} image(s) without a {column}" if missing else ""))


def print_recalibration(report: dict) -> None:
    """Before and after the site's recalibration, on its test split, with the 95% bootstrap intervals."""
    before, after = report["before"], report["after"]
    fitted = report["fitted"]
    table = Table(title=Text(f"{report['data']} · {report['split']} ({report['images']} images) · "
                             f"{report['method']} fitted on val ({report['fitted_on']['images']} images)"))
    for col in ("macro", "before", "after"):
        table.add_column(col, justify="left" if col == "macro" else "right")

    def shown(side: dict, key: str) -> str:
        ci = side["macro_ci95"].get(key)
        return f"{_fmt(side['macro'][key])}" + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")

    for key in ("ece", "brier", "auc", "f1", "mcc", "sensitivity", "specificity"):
        table.add_row(key, shown(before, key), shown(after, key))
    out.print(table)
    not_fitted = [c for c, ok in fitted.items() if not ok]
    result_line(f"thresholds re-chosen on the site's val by {report['threshold_metric']}; "
                + (f"not fitted (no positive or no negative in val): {', '.join(not_fitted)}" if not_fitted
                   else "every scored class fitted"))
    result_line(f"intervals: {report.get('ci_method', '95% bootstrap CI')}")
