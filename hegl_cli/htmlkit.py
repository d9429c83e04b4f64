"""A small kit for self-contained HTML pages (what `hegl report` writes): escaping, number formatting,
tables, images as data URIs, and the page around them (inline CSS, a script that marks the page's own
health). It knows nothing of runs; the report's sections use it."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from hegl_cli.plots import plt

CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:1.5em;color:#1b1f24}
h1{font-size:1.6em;margin:.2em 0} h2{border-bottom:2px solid #d0d7de;padding-bottom:.2em;margin-top:1.8em}
h3{margin-top:1.3em} table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:.25em .55em;text-align:right} th:first-child,td:first-child{text-align:left}
th{background:#f6f8fa} img{max-width:100%;height:auto} .muted{color:#57606a} .note{background:#fff8c5;padding:.4em .7em}
.gallery{display:grid;grid-template-columns:1fr;gap:1em} .facts td{text-align:left}
figure{margin:0} figcaption{font-size:.85em;color:#57606a} pre{background:#f6f8fa;padding:.6em;overflow:auto;font-size:.8em}
@media print{body{max-width:none;padding:0;font-size:11pt} h2{break-before:auto} figure,table{break-inside:avoid}
details{display:block} details>summary{display:none}}
"""



# Marks the page's own health on the <html> element: how many images decoded and any script error.
CHECK_SCRIPT = """
window.hegl_errors=[];window.addEventListener('error',function(e){window.hegl_errors.push(String(e.message))});
window.addEventListener('load',function(){var im=Array.from(document.images);
var ok=im.filter(function(i){return i.complete&&i.naturalWidth>0}).length;
document.documentElement.setAttribute('data-images',ok+'/'+im.length);
document.documentElement.setAttribute('data-errors',window.hegl_errors.join(' | '));
if(ok<im.length){var p=document.createElement('p');p.className='note';p.textContent=(im.length-ok)+' image(s) failed to decode';document.body.prepend(p);}});
"""



def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)



def fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else esc(value)



def png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()



def figure_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()



def img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{esc(alt)}">'



def table(header: list[str] | None, rows: list[list[Any]], css: str = "") -> str:
    head = "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{css}'>{head}<tbody>{body}</tbody></table>"


def page(title: str, subtitle: str, body: str) -> str:
    """A whole HTML document: ``title`` as heading, a muted ``subtitle`` line, then ``body``."""
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><meta name=viewport "
            f"content='width=device-width, initial-scale=1'><title>{esc(title)}</title><style>{CSS}</style>"
            f"<script>{CHECK_SCRIPT}</script></head><body><h1>{esc(title)}</h1>"
            f"<p class=muted>{subtitle}</p>{body}</body></html>")
