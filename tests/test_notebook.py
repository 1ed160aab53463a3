"""The study notebook, executed headless on a smoke-sized study: files, HTML content, re-use."""
import html
import os
import re
import sqlite3
from pathlib import Path

import browser
import nbformat
import pytest

from transferlab.report import notebook
from transferlab.cli import main
from transferlab.config import load_study
from transferlab.data import fingerprint
from transferlab.models import _offline_weights_file
from transferlab.resources import notebook_template, shipped_configs

CONFIG = Path(__file__).parent / "configs" / "notebook-smoke.toml"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if _offline_weights_file("efficientnet_lite0") is None:
        pytest.skip("efficientnet_lite0 offline weights package not installed")
    work = tmp_path_factory.mktemp("nb")
    old = Path.cwd()
    os.chdir(work)  # the store and runs/ land here (relative paths are the caller's)
    try:
        code = main(["notebook", str(CONFIG), "--out", "out", "--store", str(work / "store.db"),
                     "--data-root", str(work / "data"), "--timeout", "600"])
    finally:
        os.chdir(old)
    assert code == 0
    paths = sorted((work / "out").iterdir())
    text = (work / "out" / "notebook-smoke.html").read_text(encoding="utf-8")
    return {"work": work, "paths": paths, "html": text, "text": html.unescape(text),
            "plain": html.unescape(re.sub(r"<[^>]+>", "", text))}  # highlighted code as text


def test_files_written(report):
    out = report["work"] / "out"
    names = {p.name for p in report["paths"]}
    assert names == {"notebook-smoke.ipynb", "notebook-smoke.html", "notebook-smoke-accuracy.png",
                     "notebook-smoke-accuracy.svg"}
    for n in names:
        assert (out / n).stat().st_size > 1000
    assert (report["work"] / "store.db").exists()


def test_executed_notebook_has_outputs_and_parameters(report):
    nb = nbformat.read(report["work"] / "out" / "notebook-smoke.ipynb", as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    i = next(i for i, t in enumerate(tags) if "parameters" in t)
    assert "injected-parameters" in tags[i + 1]
    assert str(CONFIG.resolve()) in nb.cells[i + 1].source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    errors = [o for c in code for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def test_html_is_self_contained_with_chart(report):
    text = report["html"]
    assert "data:image/png;base64," in text
    assert text.count("data:image/png;base64,") >= 5  # samples, graphs, chart, curves, confusion
    assert not re.search(r'<img[^>]+src="(?!data:)', text)  # no image the file does not carry
    assert not re.search(r'<script[^>]+src=|<link[^>]+href="?(https?:)?//', text)
    assert not notebook.external_resources(text)  # opens offline: no CDN script or style


def test_html_export_needs_no_network():
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
    nb = new_notebook(cells=[new_markdown_cell("# Report"), new_code_cell("1 + 1")])
    page = notebook.to_html(nb)
    assert "<h1" in page and "jp-Notebook" in page and "<style" in page  # styles inlined
    assert "cdnjs" not in page and not notebook.external_resources(page)
    assert notebook.external_resources('<script src="https://cdn.example/x.js"></script>')
    assert notebook.external_resources('const u = "https://cdn.example/m.esm.min.mjs";')


def test_html_describes_every_experiment(report):
    text = report["text"]
    study = load_study(CONFIG, fingerprint=fingerprint)
    for spec in study.experiments:
        assert f"=== {spec.name}  (id {spec.id}, статус: готов)" in text
    # the training log reads in Russian (`transferlab show` prints the same record in English)
    assert len(re.findall(r"инициализация  : веса ImageNet из офлайн-пакета PyPI", text)) >= 2
    assert "инициализация  : случайная инициализация (по умолчанию в PyTorch" in text
    assert re.search(r"оптимизатор    : adamw \(lr=0\.003, weight_decay=", text)
    assert re.search(r"оптимизатор    : sgd \(lr=0\.02, weight_decay=.*momentum=0\.9", text)
    assert re.search(r"оптимизатор    : sgd \(lr=0\.1, ", text)
    # the grid's experiments and the final stage's one
    assert len(re.findall(r"  точность \(тест\): \d+\.\d\d % \(95 % ДИ ", text)) == \
        len(study.experiments) + 1
    assert re.search(r"  эпоха   1/1  потери \d\.\d{4}  обучающая ", text)
    log = text[text.index("=== "):text.index("4. Результаты")]
    assert "initialisation" not in log and "random init" not in log and "epoch " not in log


def test_html_states_data_hardware_and_architecture(report):
    text = report["text"]
    assert "копия данных : синтетические тестовые изображения, валидация — " in text
    assert re.search(r"оборудование : .+\(ядер: \d+\)", text)
    assert re.search(r"код          : transferlab, коммит \S+, локальные изменения: "
                     r"(есть|нет|неизвестно)", text)
    assert "заменено       : Linear(1280->1000) -> новая голова Linear(1280->4)" in text
    assert "Total params" in text and "Trainable params" in text
    assert "reference" in text  # the external result in the table


def test_html_best_model_section(report):
    text = report["text"]
    m = re.search(r"Лучшая модель \(выбрана по точности на валидации\): (\S+)", text)
    con = sqlite3.connect(report["work"] / "store.db")  # best validation accuracy, then faster
    (want,), = con.execute("SELECT e.name FROM results r JOIN experiments e ON e.id = r.exp_id "
                           "WHERE e.status = 'done' AND r.val_acc IS NOT NULL "
                           "ORDER BY r.val_acc DESC, r.total_seconds ASC LIMIT 1").fetchall()
    con.close()
    assert m and m.group(1) == want
    block = text[m.start():].split("</pre>")[0]
    assert re.search(r"исходная модель\s+: \S+", block)
    assert re.search(r"изменённые слои\s+: классификатор заменён: ", block)
    assert re.search(r"оптимизатор\s+: (sgd|adamw) \(lr=", block)
    assert re.search(r"эпохи\s+: 1; (по валидации выбрана эпоха 1|проба сообщает последнюю)", block)
    assert re.search(r"размер батча\s+: 32\n", block)
    assert re.search(r"расписание LR\s+: косинусное, разогрев 0 эп\.", block)
    val = re.search(r"точность \(валидация\)\s+: (\d+\.\d\d % \(95 % ДИ [\d.]+–[\d.]+ %, n = 24\))",
                    block)
    # the smoke study scores without TTA; with it, the block gives the figure without as well
    assert re.search(r"точность \(тест\)\s+: \d+\.\d\d % \(95 % ДИ [\d.]+–[\d.]+ %, n = 80\), "
                     r"без flip TTA", block)
    assert val and "±" not in text
    # one interval method: the results table and the conclusions give that figure the same one
    results = text[text.index("4. Результаты"):text.index("5. Лучшая модель")]
    assert val.group(1) in results and val.group(1) in text[text.index("7. Выводы"):]
    assert "best model (chosen" not in text  # the notebook's block is Russian, the CLI's English


def test_inject_replaces_previous_parameters():
    nb = nbformat.read(notebook_template(), as_version=4)
    once = notebook.inject(nb, {"config": "a.toml"})
    twice = notebook.inject(once, {"config": "b.toml"})
    injected = [c for c in twice.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "b.toml" in injected[0].source
    assert len(twice.cells) == len(nb.cells) + 1


def test_fresh_report_renders_in_a_browser(report, tmp_path):
    """The report just built, in headless Chromium: images, chart and table on screen, no
    network request, no console error (tests/browser.py; CI fails rather than skip)."""
    shot = tmp_path / "notebook-smoke.png"
    state = browser.inspect(report["work"] / "out" / "notebook-smoke.html", shot,
                            browser.REPORT_SECTIONS)
    assert browser.problems(state, browser.REPORT_SECTIONS) == []
    assert len(state["images"]) >= 5 and state["chart"]["natural_width"] >= 600
    assert shot.stat().st_size > 20000


def test_html_is_russian_with_matching_lang_and_title(report):
    page, text = report["html"], report["text"]
    assert '<html lang="ru">' in page
    assert "<title>Перенос обучения (transfer learning) на CIFAR-10: notebook-smoke</title>" in page
    for th in ("эксперимент", "статус", "режим", "ключевые параметры", "валидация (n = 24)",
               "тест (n = 80)", "класс", "обучающая", "обучаемые группы"):
        assert re.search(rf"<th[^>]*>{re.escape(th)}</th>", text), th
    for th in ("val acc", "test acc", "experiment", "class"):
        assert not re.search(rf"<th[^>]*>{th}</th>", text), th
    assert re.search(r"<td[^>]*>линейная проба</td>", text) and "<td style=\"text-align:left\">готов</td>" in text


def test_data_line_printed_once(report):
    nb = nbformat.read(report["work"] / "out" / "notebook-smoke.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert printed.count("копия данных :") == 1
    assert not re.search(r"^data: ", printed, re.MULTILINE)  # the Runner's line is not repeated


def test_code_section_shows_the_package_source(report):
    text = report["plain"]
    assert "6. Код обучения" in text and "Не удалось показать" not in text
    assert re.search(r"код ниже: коммит \S+, локальные изменения: (есть|нет|неизвестно)", text)
    assert re.search(r"эксперименты обучены: коммит \S+, локальные изменения", text)
    for module, qualname, *_ in notebook.CODE_SHOWN:
        assert f"{module}.{qualname}" in text
        src, where = notebook.code_source(module, qualname)
        first = next(line for line in src.splitlines() if line.lstrip().startswith(("def ", "class ")))
        assert first.strip() in text, (qualname, first)
        assert where in text


def test_conclusions_end_the_report(report):
    text = report["plain"]
    con = sqlite3.connect(report["work"] / "store.db")
    (best,), = con.execute("SELECT e.name FROM results r JOIN experiments e ON e.id = r.exp_id "
                           "WHERE e.status = 'done' AND r.val_acc IS NOT NULL "
                           "ORDER BY r.val_acc DESC, r.total_seconds ASC LIMIT 1").fetchall()
    con.close()
    assert text.index("5. Лучшая модель") < text.index("6. Код обучения") < text.index("7. Выводы")
    tail = text[text.index("7. Выводы"):]
    assert f"Победитель по валидации — {best}" in tail  # Markdown's backticks became <code>
    assert "n = 24" in tail and "n = 80" in tail and "Цена каждого режима" in tail
    assert "Финальная стадия." in tail and "обучена заново как" in tail  # the smoke study has one
    assert "Повторный запуск" not in tail  # the rerun helper sits in section 3


def test_baseline_is_the_practical_1_stand_in_with_the_external_example(report):
    text = report["plain"]
    assert "встроенная замена результата первой практической работы" in text
    assert "[[external]]" in text and "test_acc = 0.78" in text
    assert "внешний результат: reference, тест 50.00 %" in text


def test_code_shown_entries_resolve_and_a_missing_one_degrades():
    page = notebook.code_html(strict=True)  # fails loudly on an entry that moved
    for module, qualname, *_ in notebook.CODE_SHOWN:
        src, _ = notebook.code_source(module, qualname)
        assert f"def {qualname.split('.')[-1]}(" in src or f"class {qualname.split('.')[-1]}" in src
        assert f"{module}.{qualname}" in page
    gone = [("transferlab.fit.train", "no_such_function"), ("transferlab.no_such_module", "f")]
    for entry in gone:
        with pytest.raises((AttributeError, ImportError)):
            notebook.code_html([entry], strict=True)
    page = notebook.code_html(gone + [("transferlab.fit.optim", "lr_factor")])
    assert page.count("Не удалось показать") == 2 and "transferlab.fit.train.no_such_function" in page
    assert "lr_factor" in page


@pytest.mark.parametrize("name", ["cifar10-quick.toml", "cifar10.toml"])
def test_configs_show_how_to_add_a_practical_1_result(name, tmp_path):
    config = shipped_configs()[name.removesuffix(".toml")]
    assert "# [[external]]" in config.read_text()
    snippet = notebook.external_example(config)
    assert snippet.startswith("[[external]]") and "test_acc" in snippet and "note" in snippet
    mine = tmp_path / name  # the snippet, uncommented, is a valid external result
    mine.write_text(config.read_text() + "\n" + snippet + "\n")
    (x,) = load_study(mine, fingerprint=None).externals
    assert x.name and 0 < x.test_acc < 1 and x.note


def test_final_model_block_and_its_conclusions(report):
    """The study's answer: the final stage's model, described in full, and what it changed."""
    text = report["plain"]
    log = text[text.index("3. Обучение и тестирование"):text.index("4. Результаты")]
    assert "(финальная стадия, id" in log  # its training log, after the grid's
    results = text[text.index("4. Результаты"):text.index("5. Лучшая модель")]
    assert "финальная модель: final-" in results  # its own chart bar (below the table)
    block = text[text.index("Финальная модель (конфигурация, лучшая по валидации"):]
    for label in ("выбрана", "исходная модель", "изменённые слои", "тип переноса", "оптимизатор",
                  "расписание LR", "инициализация", "эпохи", "размер батча", "точность (тест)"):
        assert f"  {label}" in block[:3000], label
    assert "лучшая точность на валидации среди" in block[:3000]
    assert "Финальная стадия." in text and "обучена заново как" in text


def test_template_is_a_thin_view():
    """Each code cell of the template is a call and a display: no store query, no JSON."""
    nb = nbformat.read(notebook_template(), as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert sum(len(src.splitlines()) for src in code) <= 120
    for src in code:
        for banned in ("db.get(", "json.loads", ".result(", ".epochs(", "store.", "import json"):
            assert banned not in src, (banned, src)
    body = [c for c in nb.cells if c.cell_type == "code"
            and not {"install", "parameters"} & set(c.metadata.get("tags", []))]
    assert all(len(c.source.splitlines()) <= 2 or "StudyView.open" in c.source for c in body)
    assert not re.search(r"(?i)\bissue \d+", "".join(c.source for c in nb.cells))


def test_report_names_no_folder_of_this_machine(report):
    """The parameters cell and every output give paths as the user typed them, relative to
    the working folder: the store, the chart, the data cache."""
    nb = nbformat.read(report["work"] / "out" / "notebook-smoke.ipynb", as_version=4)
    params = next(c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "workdir = '.'" in params and "out_dir = 'out'" in params
    assert "data_root = 'data'" in params
    text = report["text"]
    work = str(report["work"])
    assert work not in text.replace(str(CONFIG.resolve()), "")  # only the config as it was given
    assert "хранилище    : store.db" in text
    assert "диаграмма сохранена: out/notebook-smoke-accuracy.png и .svg" in text
