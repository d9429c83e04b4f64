"""A property over the whole CLI (issue 21): whatever command runs over a tree of the user's files,
every file hegl did not create keeps its bytes, and nothing is written outside the output paths the
command was given (its --out, the run folder)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from hegl_cli.cli.app import app

runner = CliRunner()
# Names a hostile tree holds: hegl's own output names, path tricks, control characters, markup.
IMAGE_NAMES = ["...png", "-h.png", "a\nb.png", "[b]x[i].png", "a b.png", "ü.png", "x.png", "X.PNG", ".hidden.png"]
OUTPUT_NAMES = ["grid.png", "predictions.json", "robustness.json", "robustness.png", "predictions.csv",
                "report.html", "overlay_nodule.png", "attention_patch.npy", "x"]


def build_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for folder in ("inbox", "inbox/nested", "figs", "paper", "figs/x"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(IMAGE_NAMES):
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(root / "inbox" / name, format="PNG")
        if k % 3 == 0:
            Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(root / "inbox/nested" / name, format="PNG")
    for folder in ("figs", "paper", "figs/x", "inbox"):
        for name in OUTPUT_NAMES:
            if not (root / folder / name).exists():
                (root / folder / name).write_bytes(f"the user's {folder}/{name}".encode())
    (root / "list.csv").write_text("path\ninbox/x.png\ninbox/...png\ninbox/-h.png\n")
    (root / "inbox" / ".hegl-outputs.jsonl").write_text("a file of the user's that happens to have this name\n")


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def template(tmp_path_factory, _trained_master):
    root = tmp_path_factory.mktemp("user")
    build_tree(root / "home")
    shutil.copytree(_trained_master, root / "runs" / "tiny")
    return root


def fresh_copy(template: Path) -> Path:
    """A new copy of the user's tree and the run for one example (examples must not see each other)."""
    FRESH[0] += 1
    root = template.parent / f"{template.name}-{FRESH[0]}"
    shutil.copytree(template, root, symlinks=True)
    return root


FRESH = [0]


inputs = st.sampled_from(["inbox", "inbox/nested", "list.csv", *[f"inbox/{n}" for n in IMAGE_NAMES]])
folders = st.sampled_from(["figs", "paper", "figs/x", "inbox", "new", "inbox/nested", "figs/grid.png"])
files = st.sampled_from(["figs/predictions.csv", "paper/report.html", "new.csv", "inbox/x.png", "figs/x/x",
                         "new.html", "figs"])
force = st.booleans()


@st.composite
def commands(draw) -> tuple[list[str], list[str]]:
    """(argv with {run} for the run folder, the output paths the command was given)."""
    kind = draw(st.sampled_from(["explain", "predict", "robustness", "report", "evaluate"]))
    flags = ["--force"] if draw(force) else []
    if kind == "explain":
        out = draw(st.none() | folders)
        argv = ["explain", draw(inputs), "--run", "{run}", *(["--out", out] if out else []), *flags]
        return argv, [out] if out else []
    if kind == "predict":
        out = draw(files)
        return ["predict", draw(inputs), "--run", "{run}", "--out", out, "--workers", "0", *flags], [out]
    if kind == "robustness":
        out = draw(folders)
        return ["robustness", "{run}", "--sigma", "0.1", "--draws", "1", "--out", out, *flags], [out]
    if kind == "report":
        out = draw(files)
        return ["report", "{run}", "--gallery", "1", "--out", out, *flags], [out]
    return ["evaluate", "{run}", "--no-faithfulness", "--set", "eval.bootstrap=5"], []


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(command=commands())
def test_no_command_touches_a_file_it_did_not_make(template, command, monkeypatch):
    root = fresh_copy(template)
    run = root / "runs" / "tiny"
    monkeypatch.chdir(root / "home")
    argv, outputs = command
    argv = [a.replace("{run}", str(run)) for a in argv]
    before = snapshot(root)
    result = runner.invoke(app, ["-q", *argv])
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    after = snapshot(root)
    run_folder = str(run.relative_to(root))
    # The command's outputs, the run folder, and the record hegl keeps beside what it writes.
    allowed = [str(Path("home") / o) for o in outputs] + [run_folder]
    allowed += [str(Path("home") / o).rsplit("/", 1)[0] + "/.hegl-outputs.jsonl" for o in outputs]

    def inside(path: str) -> bool:
        return any(path == a or path.startswith(a + "/") for a in allowed)

    user_files = [p for p in before if not p.startswith(run_folder + "/")]
    touched = [p for p in user_files if after.get(p) != before[p]]
    assert not touched, (argv, touched, result.output)
    new = set(after) - set(before)
    assert not [p for p in new if not inside(p)], (argv, sorted(new), result.output)
