"""What vitkit's reports (bench, trust) share: the page style, plots embedded as data URIs (a report is one
self-contained HTML file), a script that marks on <body> whether every plot decoded (a headless-browser test
reads it), and replacing a report directory in one step."""

import base64
import html
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 12px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
td.text, th { text-align: left; }
th { background: #f0f0f0; position: sticky; top: 0; }
tr.pareto td { background: #fff3c4; font-weight: 600; }
tr.failed td { background: #fde2e2; color: #8a1f11; }
tr.partial td { background: #fdf0e2; }
td.flag { background: #fde2e2; color: #8a1f11; font-weight: 600; }
.plots img { max-width: 100%; border: 1px solid #ddd; margin: .5em 0; }
.note { color: #555; }
#plot-warning { display: none; color: #8a1f11; font-weight: 600; }
"""

# Marks on <body> whether every plot decoded; shows a warning if not (and gives headless tests a hook).
PLOT_CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll("img.plot"));
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute("data-plots-loaded", String(imgs.length - bad.length));
  document.body.setAttribute("data-plots-failed", String(bad.length));
  if (bad.length) { document.getElementById("plot-warning").style.display = "block"; }
});
"""


def png_img(path: Path, name: str) -> str:
    """An <img class="plot"> holding the PNG at `path` as a data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    name = html.escape(name)
    return f'<img class="plot" id="plot-{name}" alt="{name} plot" src="data:image/png;base64,{data}">'


def replace_dir(new: Path, out: Path) -> None:
    """`new` becomes `out`; an existing `out` is replaced as a whole or, on failure, left as it was."""
    if not out.exists():
        os.rename(new, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, old)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_report_dir(out: str | Path, fill: Callable[[Path], None]) -> Path:
    """`fill` writes the report into a fresh temporary directory beside `out`, which then replaces `out`, so an
    existing report is either untouched or wholly replaced."""
    out = Path(out)
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.resolve().parent))
    try:
        fill(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_output_dir(out: Path, tool: str, markers: tuple[str, ...] = ("results.json",)) -> Path:
    """Fail before measuring anything if the report could not be written, or would replace a directory
    that is not an earlier report (one holding any of `markers`)."""
    out = out.expanduser().resolve()
    if out == Path.cwd() or out in Path.cwd().parents or out == out.parent:
        raise ValueError(f"--out {out} is the current directory or above it; name a directory for the report")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in markers):
        raise ValueError(f"--out {out} is a non-empty directory that is not an earlier {tool} report; "
                         "it would be replaced as a whole: choose a new or empty directory")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: parent directory {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise PermissionError(f"--out {out}: cannot write in {out.parent}")
    return out
