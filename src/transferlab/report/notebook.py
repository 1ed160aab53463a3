"""Execute the study notebook headless and write the report: .ipynb with outputs, .html, chart.

The notebook (the package's notebooks/cifar10_transfer_learning.ipynb, see resources.py)
drives the library; this module only fills in its parameters (a cell injected after the one
tagged `parameters`, as papermill does), runs it with nbclient in the current directory, and
exports it with nbconvert.
"""
from __future__ import annotations

import copy
import logging
import re
from pathlib import Path

from ..errors import UserError
from ..places import typed_path
from ..resources import is_shipped, notebook_template, study_config

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
log = logging.getLogger(__name__)


def parameters_cell(params: dict, notes: list[str] = ()):
    from nbformat.v4 import new_code_cell
    lines = ["# Parameters injected by `transferlab notebook`", *(f"# {n}" for n in notes)]
    lines += [f"{k} = {v!r}" for k, v in params.items()]
    cell = new_code_cell("\n".join(lines))
    cell.metadata["tags"] = ["injected-parameters"]
    return cell


def inject(nb, params: dict, notes: list[str] = ()):
    """A copy of `nb` with a parameter cell right after the `parameters`-tagged cell."""
    nb = copy.deepcopy(nb)
    idx = next((i for i, c in enumerate(nb.cells)
                if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if idx is None:
        raise UserError("the notebook has no cell tagged 'parameters'")
    nb.cells = [c for c in nb.cells
                if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    nb.cells.insert(idx + 1, parameters_cell(params, notes))
    return nb


def _typed(p) -> str | None:
    """A path for the parameters cell as the user gave it, relative to the working folder
    (the kernel's too): the executed report names no folder of this machine."""
    return typed_path(Path(p).expanduser()) if p is not None else None


def _store_for_kernel(store) -> tuple[str | None, dict | None, list[str]]:
    """(the `store` parameter, the kernel's environment or None, notes for the cell).

    The executed notebook and its HTML are what users commit and hand in, so a server URL
    (it may hold a password) is never written into them: the kernel reads it from
    TRANSFERLAB_STORE, as `load_study` does, and the cell names it masked."""
    import os

    from ..config import STORE_ENV
    from ..places import is_server_url
    from ..store import mask_url
    if not is_server_url(store):
        return _typed(store), None, []
    return None, {**os.environ, STORE_ENV: store}, [
        f"store: {mask_url(store)}, passed to the kernel in ${STORE_ENV} (never written here)"]


# nbconvert's lab template loads require.js, MathJax and mermaid from a CDN; opened offline
# (a classroom laptop) those requests fail. The report has images, text and tables only (no
# widgets, math or diagrams), so this template leaves those scripts out; CSS is inlined already.
_OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
_EXTERNAL = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*?\b(?:src|href)\s*=\s*["']?"""
                       r"""(?:https?:)?//[^"'\s>]+|["'](?:https?:)?//[^"'\s]+\.(?:m?js|css)\b""",
                       re.IGNORECASE)


def external_resources(html: str) -> list[str]:
    """Scripts, styles, images or modules a page would fetch from the network."""
    return _EXTERNAL.findall(html)


def first_heading(nb) -> str | None:
    """The text of the notebook's first level-1 Markdown heading."""
    for c in nb.cells:
        if c.cell_type == "markdown":
            m = re.search(r"^# +(.+?)\s*$", c.source, re.MULTILINE)
            if m:
                return m.group(1)
    return None


def to_html(nb) -> str:
    """The notebook as one HTML file that needs no network: images embedded, no CDN scripts.

    The page's `lang` is the notebook's metadata `lang` (the template says "ru"), its title the
    notebook's metadata `title`, else its first heading."""
    import jinja2
    from nbconvert import HTMLExporter
    if "title" not in nb.metadata and first_heading(nb):
        nb = copy.deepcopy(nb)
        nb.metadata["title"] = first_heading(nb)
    exporter = HTMLExporter(embed_images=True, template_name="lab",
                            language_code=nb.metadata.get("lang", "en"),
                            extra_loaders=[jinja2.DictLoader({"offline.html.j2": _OFFLINE_TEMPLATE})],
                            template_file="offline.html.j2")
    body, _ = exporter.from_notebook_node(nb)
    for ref in external_resources(body):  # from a cell's own HTML output, say which
        log.warning("the HTML report still refers to the network: %s", ref[:120])
    return body


def execute(config, out_dir: Path = Path("reports"), data: str | None = None,
            subset: int | None = None, epochs: int | None = None, store=None, data_root=None,
            timeout: int | None = None, notebook: Path | None = None,
            budget: str | None = None) -> list[Path]:
    """Run the notebook for one study; returns the files written.

    Writes <out>/<study>.ipynb (with outputs), <out>/<study>.html (self-contained: images are
    embedded) and <out>/<study>-accuracy.png / .svg (saved by the notebook). `config` is a
    path or a shipped config's name, passed to the notebook as given; relative paths are taken
    from the current directory, which is also the kernel's working directory and the
    notebook's `workdir`. If a cell fails, the partial notebook and HTML are still written,
    then the error is raised.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    from ..config import load_study
    from ..data import fingerprint

    config = str(config)
    study = load_study(config, data=data, subset=subset, epochs=epochs,  # fails early, names files
                       fingerprint=fingerprint, budget=budget)
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    src = Path(notebook) if notebook else notebook_template()
    nb = nbformat.read(src, as_version=4)
    # the kernel works in the current folder: every path is given relative to it where it can be
    params = {"config": _typed(config) if not is_shipped(config) else config, "workdir": ".",
              "data": data, "subset": subset, "epochs": epochs, "budget": budget,
              "store": None, "data_root": _typed(data_root), "out_dir": _typed(out_dir),
              "run_study": True}
    params["store"], kernel_env, notes = _store_for_kernel(store)
    nb = inject(nb, params, notes)
    nb.metadata["title"] = f"{first_heading(nb) or 'transferlab'}: {study.name}"
    client = NotebookClient(nb, timeout=timeout if timeout else -1, kernel_name="python3",
                            allow_errors=False,
                            resources={"metadata": {"path": str(Path.cwd())}})
    ipynb = out_dir / f"{study.name}.ipynb"
    html = out_dir / f"{study.name}.html"
    error = None
    try:
        client.execute(**({"env": kernel_env} if kernel_env else {}))
    except CellExecutionError as e:
        error = e
    finally:
        nbformat.write(nb, ipynb)
        html.write_text(to_html(nb), encoding="utf-8")
    if error is not None:
        tail = "\n".join(_ANSI.sub("", str(error)).strip().splitlines()[-25:])
        raise UserError(f"the notebook failed ({getattr(error, 'ename', 'error')}: "
                        f"{_ANSI.sub('', str(getattr(error, 'evalue', '')))}); the partial report "
                        f"is in {html}.\n{tail}")
    paths = [ipynb, html]
    paths += [p for p in (out_dir / f"{study.name}-accuracy.png",
                          out_dir / f"{study.name}-accuracy.svg") if p.exists()]
    return paths


# ------------------------------------------------------------------ the code that ran

# What the report's "Код обучения" section shows, rendered from the installed package's own
# source (inspect), so the page shows the code that trained the models, never a copy.
# (module, qualified name, caption). A refactor that moves a function must update this list:
# tests/test_notebook.py fails on an entry that no longer resolves.
CODE_SHOWN = [
    ("transferlab.models", "build", "Сборка сети: предобученная основа и новая голова на C классов"),
    ("transferlab.net", "make_head", "Новая голова: линейная или MLP"),
    ("transferlab.regimes", "Phase",
     "Фаза режима в реестре: какие группы обучаются, сколько эпох, множитель LR, кэш признаков"),
    ("transferlab.regimes", "trained_groups", "Какие группы слоёв обучаются в каждой фазе режима"),
    ("transferlab.regimes", "apply", "Заморозка по режиму: requires_grad по группам слоёв"),
    ("transferlab.regimes", "set_train_mode",
     "Режим train, но замороженные слои (BatchNorm) сохраняют свои статистики"),
    ("transferlab.fit.train", "Trainer._maybe_unfreeze",
     "Смена фазы режима (gradual, lp-ft): после эпох одной головы — все слои"),
    ("transferlab.fit.optim", "param_groups",
     "Группы параметров оптимизатора: без weight decay на нормах и смещениях, послойный LR"),
    ("transferlab.fit.optim", "make_optimizer", "Оптимизатор"),
    ("transferlab.fit.optim", "lr_factor", "Расписание скорости обучения (множитель к базовому LR на шаге)"),
    ("transferlab.fit.train", "Trainer._train_epoch", "Шаг обучения: эпоха по батчам"),
    ("transferlab.fit.train", "Trainer.fit",
     "Цикл по эпохам: валидация после каждой эпохи, веса лучшей по валидации эпохи"),
    ("transferlab.fit.evaluate", "on_images", "Оценка сети: логиты исходных и отражённых изображений (flip TTA)"),
    ("transferlab.fit.probe", "fit_heads",
     "Линейная проба: головы для каждого weight decay обучаются на закэшированных признаках"),
    ("transferlab.fit.probe", "sweep",
     "Выбор weight decay по валидации; выбор на краю сетки расширяет её"),
    ("transferlab.fit.probe", "fit",
     "Проба целиком: признаки, выбор weight decay по валидации, оценка на тесте"),
]


def resolve_code(module: str, qualname: str):
    """The function or class `module.qualname`; ImportError or AttributeError if it moved."""
    import importlib
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def code_source(module: str, qualname: str) -> tuple[str, str]:
    """(source, where) of one entry: dedented source text and 'transferlab/x.py, строка N'."""
    import inspect
    import textwrap
    obj = inspect.unwrap(resolve_code(module, qualname))
    lines, start = inspect.getsourcelines(obj)
    path = Path(inspect.getsourcefile(obj))
    where = f"{path.parent.name}/{path.name}, строка {start}"
    return textwrap.dedent("".join(lines)), where


def highlight_html(src: str) -> str:
    """Python source as HTML: Pygments (a dependency of nbconvert) with inline styles, which
    survive the HTML export and Jupyter alike; a plain <pre> where Pygments is missing."""
    import html
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
    except ImportError:
        return f"<pre>{html.escape(src)}</pre>"
    return highlight(src, PythonLexer(), HtmlFormatter(noclasses=True, style="default"))


def code_html(entries=None, strict: bool = False) -> str:
    """The code section's HTML. An entry that cannot be shown becomes a line saying so (or,
    with strict, raises: the tests use that)."""
    import html
    parts = []
    for entry in CODE_SHOWN if entries is None else entries:
        module, qualname = entry[0], entry[1]
        caption = entry[2] if len(entry) > 2 else ""
        name = f"{module}.{qualname}"
        try:
            src, where = code_source(module, qualname)
        except Exception as e:  # noqa: BLE001  the report goes on without this one entry
            if strict:
                raise
            parts.append(f"<p><b>Не удалось показать <code>{html.escape(name)}</code></b>: "
                         f"{html.escape(type(e).__name__)}: {html.escape(str(e))}</p>")
            continue
        parts.append(f"<h4>{html.escape(caption or name)}</h4>"
                     f"<p><code>{html.escape(name)}</code> ({html.escape(where)})</p>"
                     + highlight_html(src))
    return "\n".join(parts)


# ------------------------------------------------------------------ the practical-1 result

EXTERNAL_EXAMPLE = """[[external]]
name = "practical-1 CNN"
test_acc = 0.78          # a fraction: your test accuracy on CIFAR-10
note = "my CNN from the first practical work, 30 epochs\""""


def external_example(config) -> str:
    """The commented `[[external]]` example of a study config, uncommented: how a user adds
    their own practical-1 result; `config` is a file or a shipped config's name.
    EXTERNAL_EXAMPLE where the config has none (or is unreadable)."""
    try:
        lines = study_config(config).read_text(encoding="utf-8").splitlines()
    except (OSError, UserError):
        return EXTERNAL_EXAMPLE
    for i, line in enumerate(lines):
        if line.strip() == "# [[external]]":
            block = ["[[external]]"]
            for nxt in lines[i + 1:]:
                body = nxt.strip()[2:] if nxt.strip().startswith("# ") else None
                if body is None or "=" not in body:  # the example ends at its last key
                    break
                block.append(body)
            return "\n".join(block)
    return EXTERNAL_EXAMPLE
