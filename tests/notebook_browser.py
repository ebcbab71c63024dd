"""The tutorial notebook, executed, converted to HTML and rendered in headless Chromium.

Used by tests/test_notebook.py, and as a script to look at the result or to refresh the
README's screenshot of the verify cell::

    .venv/bin/python tests/notebook_browser.py --html /tmp/tutorial.html
    .venv/bin/python tests/notebook_browser.py --screenshot docs/notebook-verify.png
    .venv/bin/python tests/notebook_browser.py --strip    # before committing the notebook

Nothing here needs the network or a Jupyter installation outside the virtual environment:

* the kernel is this interpreter (``sys.executable -m ipykernel_launcher``), declared in a
  kernel spec written to a temporary folder, with IPython's and Jupyter's own folders
  there too (nothing is written to the home directory);
* nbconvert's page loads MathJax from a CDN; here it loads MathJax 3 from the pip package
  ``django-static-mathjax`` (the official MathJax 3.2.2 build as static files, no
  dependencies; its top-level package is ``mathjax``), ``es5/tex-svg-full.js``: one file,
  every TeX extension, SVG output (no web fonts to fetch from ``file://``).  A small
  configuration before it enables ``$…$`` as inline math, as Jupyter and nbconvert's
  MathJax 2 configuration do, and marks the page ``data-symgrad-typeset="<count>"`` once
  MathJax has typeset it, so a test can tell "typeset" from "not yet";
* Chromium (Debian's ``chromium``) runs headless with its profile in a temporary folder,
  under a timeout, and is killed with its process group if it overstays.
"""

from __future__ import annotations

import argparse
import copy
import html.parser
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "tutorial.ipynb"
KERNEL_NAME = "symgrad-tutorial"
CHROMIUM_PACKAGE = "chromium"  # Debian's package (apt-get install chromium)
TYPESET_MARK = "data-symgrad-typeset"

# MathJax 3, configured before it loads: $…$ inline as in Jupyter; the count of typeset
# formulas set on <html> when the first typesetting is done.
MATHJAX_CONFIG = """<script>
window.MathJax = {
  tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
        processEscapes: true, processEnvironments: true},
  svg: {fontCache: 'global'},
  startup: {
    pageReady: function () {
      return MathJax.startup.defaultPageReady().then(function () {
        var count = document.querySelectorAll('mjx-container').length;
        document.documentElement.setAttribute('TYPESET_MARK', String(count));
      });
    }
  }
};
</script>""".replace("TYPESET_MARK", TYPESET_MARK)

TEMPLATE = (
    "{%- extends 'index.html.j2' -%}\n"
    "{%- block html_head_js_mathjax -%}\n"
    "{% raw %}" + MATHJAX_CONFIG + "{% endraw %}\n"
    '<script src="{{ resources.mathjax_url }}"></script>\n'
    "{%- endblock html_head_js_mathjax -%}\n"
    # require.js (for widgets) and mermaid come from a CDN too; the page needs neither
    "{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}\n"
    "{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}\n"
)


def mathjax_script() -> Path:
    """MathJax 3's single-file TeX-to-SVG build from the installed ``django-static-mathjax``."""
    try:
        import mathjax
    except ImportError as exc:
        raise RuntimeError(
            "MathJax for the offline page comes from the pip package django-static-mathjax "
            "(pip install django-static-mathjax)") from exc
    script = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / "tex-svg-full.js"
    if not script.is_file():
        raise RuntimeError(f"{script} is missing: reinstall django-static-mathjax")
    return script


def chromium() -> str | None:
    """The Chromium executable, or None when it is not installed."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


# --------------------------------------------------------------------------
# Executing
# --------------------------------------------------------------------------


def execute(notebook: Path = NOTEBOOK, timeout: int = 120):
    """Run every cell of ``notebook`` in a fresh kernel of this interpreter, in the
    notebook's folder; return the executed notebook (nbformat node)."""
    import nbclient
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    nb = nbformat.read(notebook, as_version=4)
    with tempfile.TemporaryDirectory(prefix="symgrad-kernel-") as tmp:
        kernels = Path(tmp) / "kernels"
        (kernels / KERNEL_NAME).mkdir(parents=True)
        env = {
            "IPYTHONDIR": str(Path(tmp) / "ipython"),
            "JUPYTER_CONFIG_DIR": str(Path(tmp) / "config"),
            "JUPYTER_DATA_DIR": str(Path(tmp) / "data"),
            "JUPYTER_RUNTIME_DIR": str(Path(tmp) / "runtime"),
            "MPLCONFIGDIR": str(Path(tmp) / "matplotlib"),
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "symgrad (this virtual environment)",
            "language": "python",
            "env": env,
        }
        (kernels / KERNEL_NAME / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
        km = KernelManager(
            kernel_name=KERNEL_NAME,
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]),
            connection_file=str(Path(tmp) / "connection.json"),
            # Unix sockets in the temporary folder: no TCP port open on this machine
            transport="ipc", ip=str(Path(tmp) / "kernel"),
        )
        client = nbclient.NotebookClient(
            nb, km=km, kernel_name=KERNEL_NAME, timeout=timeout, startup_timeout=60,
            resources={"metadata": {"path": str(notebook.parent)}},
        )
        client.execute()
    return nb


def cells(nb, tag: str) -> list:
    """The cells of ``nb`` tagged ``tag``."""
    return [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]


def outputs(nb, tag: str) -> list:
    """The outputs of the one code cell tagged ``tag``."""
    (cell,) = cells(nb, tag)
    return cell.outputs


# --------------------------------------------------------------------------
# Converting and rendering
# --------------------------------------------------------------------------


def to_html(nb, script: Path | None = None) -> str:
    """The notebook as nbconvert's ``lab`` page, MathJax loaded from ``script``."""
    import jinja2
    from nbconvert import HTMLExporter

    script = script or mathjax_script()
    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[jinja2.DictLoader({"symgrad_offline.html.j2": TEMPLATE})],
        template_file="symgrad_offline.html.j2",
        mathjax_url=script.as_uri(),
    )
    body, _ = exporter.from_notebook_node(nb)
    return body


def _run_chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = chromium()
    if exe is None:
        raise RuntimeError(f"chromium is not installed (apt-get install {CHROMIUM_PACKAGE})")
    with tempfile.TemporaryDirectory(prefix="symgrad-chromium-") as profile:
        cmd = [exe, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
               "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
               "--allow-file-access-from-files", f"--user-data-dir={profile}", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise RuntimeError(
                f"chromium did not finish within {timeout:.0f} s: {' '.join(cmd)}") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def dump_dom(page: Path, timeout: float = 60, budget_ms: int = 20000) -> str:
    """The DOM of ``page`` after its scripts ran (``--dump-dom``; virtual time lets
    MathJax finish before the dump)."""
    done = _run_chromium([f"--virtual-time-budget={budget_ms}", "--dump-dom", page.as_uri()],
                         timeout)
    if done.returncode != 0 or "<html" not in done.stdout:
        raise RuntimeError(f"chromium --dump-dom failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def screenshot(page: Path, png: Path, size: tuple[int, int] = (1100, 800),
               timeout: float = 60, budget_ms: int = 20000) -> Path:
    """A PNG of ``page`` at ``size`` (width, height) after its scripts ran."""
    done = _run_chromium([f"--virtual-time-budget={budget_ms}", f"--screenshot={png}",
                          f"--window-size={size[0]},{size[1]}", page.as_uri()], timeout)
    if done.returncode != 0 or not png.is_file():
        raise RuntimeError(f"chromium --screenshot failed ({done.returncode}): {done.stderr[-2000:]}")
    return png


class _Text(html.parser.HTMLParser):
    """The text a reader sees as text: outside <script>, <style> and MathJax's typeset
    math (``mjx-container``, whose assistive MathML repeats the formula)."""

    SKIP = frozenset({"script", "style", "mjx-container", "svg", "math"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.depth += 1

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if not self.depth:
            self.parts.append(data)


def visible_text(dom: str) -> str:
    """The text of ``dom`` outside scripts, styles and typeset math."""
    parser = _Text()
    parser.feed(dom)
    parser.close()
    return "".join(parser.parts)


def typeset_count(dom: str) -> int | None:
    """How many formulas MathJax typeset (the page's mark), or None when it did not finish."""
    import re

    found = re.search(TYPESET_MARK + r'="(\d+)"', dom)
    return int(found.group(1)) if found else None


KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def stripped(nb):
    """A copy of ``nb`` as it is committed: no outputs, execution counts or timings, the
    notebook's metadata only the default Python kernel (cell ids and tags kept)."""
    import nbformat

    clean = copy.deepcopy(nb)
    clean.metadata = nbformat.from_dict({"kernelspec": dict(KERNELSPEC),
                                         "language_info": {"name": "python"}})
    for cell in clean.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return clean


def strip(path: Path = NOTEBOOK) -> bool:
    """Strip ``path`` in place (as :func:`stripped`); True when that changed it."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    clean = stripped(nb)
    text = nbformat.writes(clean) + "\n"
    if text == path.read_text(encoding="utf-8"):
        return False
    path.write_text(text, encoding="utf-8")
    return True


def only(nb, tags: list[str]):
    """A copy of ``nb`` holding only the cells tagged with one of ``tags``, in order."""
    part = copy.deepcopy(nb)
    part.cells = [c for c in part.cells if set(c.get("metadata", {}).get("tags", [])) & set(tags)]
    return part


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, help="write the executed notebook's page here")
    parser.add_argument("--screenshot", type=Path,
                        help="write a PNG of the verify cells (intro, wrong verdict) here")
    parser.add_argument("--width", type=int, default=1000, help="screenshot width in pixels")
    parser.add_argument("--height", type=int, default=900, help="screenshot height in pixels")
    parser.add_argument("--strip", action="store_true",
                        help="strip the notebook's outputs in place (as committed), and stop")
    args = parser.parse_args(argv)
    if args.strip:
        print(f"{NOTEBOOK}: {'stripped' if strip() else 'already stripped'}")
        return 0
    nb = execute()
    with tempfile.TemporaryDirectory(prefix="symgrad-page-") as tmp:
        page = (args.html or Path(tmp) / "tutorial.html").resolve()
        page.write_text(to_html(nb), encoding="utf-8")
        dom = dump_dom(page)
        print(f"{page}: {typeset_count(dom)} formulas typeset")
        if args.screenshot:
            part = Path(tmp) / "verify.html"
            part.write_text(to_html(only(nb, ["verify-intro", "verify-wrong"])), encoding="utf-8")
            screenshot(part, args.screenshot.resolve(), (args.width, args.height))
            print(f"wrote {args.screenshot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
