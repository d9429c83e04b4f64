"""`hegl config show`: print the resolved configuration."""

from __future__ import annotations

import typer
import yaml

from hegl_cli.cli.common import ConfigOpt, SetOpt, handles_errors, out, resolve_config

app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)


@app.command("show")
@handles_errors
def show(config: ConfigOpt = None, overrides: SetOpt = None) -> None:
    """Print the resolved config (default < --config < --set)."""
    cfg = resolve_config(config, overrides)
    out.print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="", markup=False)
