"""The study as the notebook shows it: one `StudyView`, one method per report cell.

Each method returns what its cell displays (text to print, HTML or Markdown, figures, PNG
images) and `show` displays it, so a notebook cell is one call and one display and the
template holds no store query, no JSON and no logic of its own. Every figure and sentence
comes from the library's views (tables, figures, conclusions, Russian text), the same ones
the CLI uses; the experiment logs are the records `transferlab show` prints, in Russian
(log_ru.py).

Paths are printed as the user gave them, relative to the working folder (places.typed_path):
an executed report names no folder of the machine it was made on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

from . import architecture, conclusions, figures, log_ru, ru, tables
from .. import fmt, models, resources, util
from .. import final as final_stage
from ..config import load_study
from ..data import describe_source
from ..places import typed_path


@dataclass(frozen=True)
class Html:
    html: str


@dataclass(frozen=True)
class Markdown:
    text: str


@dataclass(frozen=True)
class Png:
    data: bytes


def show(items) -> None:
    """Display what a StudyView method returned: text printed, the rest through IPython
    (a figure once, as PNG, then released)."""
    import matplotlib.pyplot as plt
    from IPython import display as ip
    for item in items if isinstance(items, list) else [items]:
        if isinstance(item, str):
            print(item)
        elif isinstance(item, Html):
            ip.display(ip.HTML(item.html))
        elif isinstance(item, Markdown):
            ip.display(ip.Markdown(item.text))
        elif isinstance(item, Png):
            ip.display(ip.Image(data=item.data, format="png"))
        else:
            ip.display(item)
            plt.close(item)


def _table(head: list[str], body: list[list], right: set[int]) -> Html:
    return Html(figures.html_table(head, body, align_right=right))


class StudyView:
    """A study over its store, as the report shows it; `runner` (study.Runner) trains."""

    def __init__(self, runner, config: str, workdir: str, out_dir: str | None = None,
                 overrides: dict | None = None):
        self.runner, self.study, self.store = runner, runner.study, runner.store
        self.config, self.workdir, self.out_dir = config, workdir, out_dir
        self.overrides = overrides or {}
        self.env = util.environment()
        self._splits = None
        self._graph_nets: dict = {}  # model -> (net, resolution): drawn by graphs()

    @classmethod
    def open(cls, config: str, workdir: str | None = None, data=None, subset=None, epochs=None,
             budget=None, store=None, data_root=None, out_dir=None) -> "StudyView":
        """Load the study (relative paths are `workdir`'s), open its store and a runner."""
        import os

        from ..data import fingerprint
        from ..study import Runner
        where = Path(workdir).expanduser() if workdir else resources.default_workdir()
        where.mkdir(parents=True, exist_ok=True)
        os.chdir(where)  # every relative path (config, store, runs/, out_dir) is workdir's
        study = load_study(config, data=data, subset=subset, epochs=epochs, budget=budget,
                           fingerprint=fingerprint)
        if store:
            study.use_store(store)
        overrides = {k: v for k, v in {"data": data, "subset": subset, "epochs": epochs,
                                       "budget": budget}.items() if v is not None}
        runner = Runner(study, data_root=data_root, overrides=overrides)
        # the folder as the user gave it; where none was given, the one chosen for them
        return cls(runner, config, workdir or str(where), out_dir, overrides)

    # -------------------------------------------------------------- set-up and data

    def setup(self) -> list:
        e, s = self.env, self.study
        return ["\n".join([
            f"рабочий каталог: {self.workdir}",
            f"исследование : {s.name} ({typed_path(self.config)}), экспериментов "
            f"{len(s.experiments)}, внешних результатов {len(s.externals)}",
            f"переопределено: {self.overrides or 'ничего'}",
            f"хранилище    : {typed_path(self.store.path)}",
            f"оборудование : {ru.device_text(e['device'])} (обучение на устройстве "
            f"{self.runner.device}), "
            f"CPU {ru.device_text(util.cpu_name())}, потоков torch {e['threads']}",
            f"программы    : python {e['python']}, torch {e['torch']}, torchvision "
            f"{e['torchvision']}, timm {e['timm']}, хост {e['host']}",
            f"код          : transferlab, {ru.git_text(e)}"])]

    @property
    def splits(self):
        if self._splits is None:
            with contextlib.redirect_stdout(io.StringIO()):  # data() says it in Russian
                self._splits = self.runner.splits()
        return self._splits

    @property
    def sizes(self) -> dict:
        return {k: len(v) for k, v in self.splits.y.items()}

    def data(self) -> list:
        sp, sizes = self.splits, self.sizes
        text = "\n".join([
            f"источник     : {self.study.data.source}",
            f"копия данных : {describe_source(self.study.data, lang='ru')}",
            f"изображения  : {sp.image_size}x{sp.image_size}, классов {sp.num_classes}; "
            + ", ".join(f"{ru.HEADERS.get(k, k)} {n}" for k, n in sizes.items())
            + (f"; пропущено нечитаемых: {len(sp.skipped)}" if sp.skipped else "")])
        counts = sp.counts()
        names = list(counts)
        body = [[c] + [counts[s][i] for s in names] for i, c in enumerate(sp.classes)]
        body.append([ru.HEADERS["total"]] + [sum(counts[s]) for s in names])
        return [text, _table(ru.header(["class"] + names), body, set(range(1, len(names) + 1)))]

    def samples(self, per_class: int = 10) -> list:
        sp = self.splits
        return [figures.sample_grid(sp.x["train"], sp.y["train"], sp.classes, per_class=per_class)]

    # -------------------------------------------------------------- architectures

    def architectures(self) -> list:
        out = []
        for model, specs in architecture.specs_by_model(self.study).items():
            if model != "baseline":
                out += self._architecture(model, specs)
        return out

    def _architecture(self, model: str, specs: list) -> list:
        rep = architecture.representative(specs)
        ncls = self.splits.num_classes
        net = architecture.build_net(rep, ncls)
        res = rep.resolution or self.splits.image_size
        self._graph_nets.setdefault(model, (net, res))
        rows = architecture.regime_rows(net, specs)
        by_name = {s.name: s for s in specs}
        body = [[r["experiment"], ru.regime(r["regime"]) + (f" (фаза {r['phase']})" if r["phase"] else ""),
                 ", ".join(r["trained"]), ", ".join(r["frozen"]) or "—",
                 f"{r['trained_params']:,}", f"{r['frozen_params']:,}",
                 models.describe_head(models.make_head(by_name[r["experiment"]].head,
                                                       net.info.num_features, ncls)),
                 fmt.resolution(by_name[r["experiment"]].resolution or self.splits.image_size)]
                for r in rows]
        head = ru.header(["experiment", "regime", "trained groups", "frozen groups",
                          "trained params", "frozen params", "new head", "resolution"])
        return [Markdown(f"### {model}"), "\n".join([
            f"архитектура    : {net.info.arch} ({net.info.family}), родное разрешение ImageNet "
            f"{net.info.native_resolution} px; сводка ниже при {res} px",
            f"инициализация  : {ru.init_text(net.info.init)}",
            f"заменено       : {net.info.old_head} -> новая голова {net.info.new_head}",
            f"группы слоёв   : {rows[0]['group_sizes']}"]),
            _table(head, body, {4, 5}), architecture.summary_for(net, rep, res, depth=3)]

    def baseline(self) -> list:
        """The baseline CNN (the first practical work's stand-in), the external results and
        how to add one's own."""
        from .notebook import external_example
        specs = architecture.specs_by_model(self.study).get("baseline")
        out = []
        if specs:
            net = architecture.build_net(specs[0], self.splits.num_classes)
            res = specs[0].resolution or self.splits.image_size
            self._graph_nets["baseline"] = (net, res)
            out.append("\n".join([f"архитектура    : {net.info.arch}",
                                  f"инициализация  : {ru.init_text(net.info.init)}",
                                  f"голова         : {net.info.new_head}",
                                  architecture.summary_for(net, specs[0], res, depth=2)]))
        else:
            out.append('в этом исследовании нет базовой CNN (model = "baseline")')
        out += [f"внешний результат: {x.name}, тест {fmt.pct(x.test_acc)}"
                + (f" ({x.note})" if x.note else "") for x in self.study.externals]
        copy = (f"; конфигурация из пакета: сначала скопируйте её, transferlab init {self.config}"
                if resources.is_shipped(self.config) else "")
        out.append(f"Свой результат первой практической работы — добавьте в файл конфигурации "
                   f"({Path(self.config).name}{copy}):\n\n{external_example(self.config)}")
        return out

    def graphs(self) -> list:
        """The baseline whole and the first pretrained model to a limited depth (torchview)."""
        if not architecture.dot_available():
            return [architecture.DOT_MISSING]
        out = []
        nets = [(m, *v, 2) for m, v in self._graph_nets.items() if m == "baseline"]
        nets += [(m, *v, 3) for m, v in self._graph_nets.items() if m != "baseline"][:1]
        for model, net, res, depth in nets:
            png = architecture.graph_png(net, res, depth=depth)
            out += [Markdown(f"**{model}** (глубина {depth}, вход {res}x{res})")]
            out += [Png(png)] if png else ["граф не нарисован"]
        return out

    # -------------------------------------------------------------- training

    def run(self, train: bool = True) -> list:
        """Train what the store lacks (the log streams as it runs), then say what happened."""
        if not train:
            return ["run_study = False: хранилище только читается, ничего не обучается"]
        out = self.runner.run()
        lines = [f"\nобучено {len(out.ran)}, уже готово или пропущено {len(out.skipped)}, "
                 f"у других процессов {len(out.busy)}, с ошибкой {len(out.failed)}"]
        lines += [f"  {name}: ошибка: {reason}" for name, reason in out.failed]
        if self.study.final is not None and self.final_member() is None:
            plan = final_stage.plan(self.study, self.store)
            lines.append(f"финальная стадия ещё не выполнена ({plan.reason})")
        return ["\n".join(lines)]

    def rerun(self, name: str | None) -> list:
        """Forget one experiment's result and train it again (None: do nothing)."""
        if not name:
            return []
        again = self.runner.rerun(name)
        self.runner.run(only=name)
        return [f"обучено заново: {', '.join(again)}"]

    def members(self) -> list[tuple[str, str]]:
        return [(e.name, e.id) for e in self.study.experiments]

    def final_member(self) -> tuple[str, str] | None:
        """(name, id) of the final stage's experiment once the store has it."""
        if self.study.final is None:
            return None
        spec = final_stage.plan(self.study, self.store).spec
        return (spec.name, spec.id) if spec and self.store.get(spec.id) else None

    def logs(self) -> list:
        """Each experiment's record, in Russian (`transferlab show` prints it in English)."""
        out = [log_ru.experiment_log(self.store, name, exp_id) for name, exp_id in self.members()]
        if (fin := self.final_member()) is not None:
            out.append(log_ru.experiment_log(self.store, *fin, final=True))
        return ["\n\n".join("\n".join(lines) for lines in out)]

    # -------------------------------------------------------------- results

    def rows(self) -> list:
        externals = [x.__dict__ for x in self.study.externals]
        return tables.study_rows(self.store, self.members(), externals)

    def final_row(self):
        fin = self.final_member()
        if fin is None:
            return None
        row, = tables.study_rows(self.store, [fin], [])
        return dataclasses.replace(row, final=True)

    def configs(self) -> dict:
        names = self.members() + ([self.final_member()] if self.final_member() else [])
        return {name: self.store.config(i) for name, i in names if self.store.get(i)}

    def results(self) -> list:
        out = [_table(*ru.results_table(self.rows(), self.configs(), self.sizes))]
        if (r := self.final_row()) is not None:
            out.append(f"финальная модель: {r.name} ({ru.status(r.status)}), тест "
                       f"{fmt.ci(r.test_acc, tables.test_n(r.result))}")
        return out

    def chart(self) -> list:
        rows, fin = self.rows(), self.final_row()
        n_grid, n_fin = self.sizes["test"], tables.test_n(fin.result) if fin else None
        title = f"{self.study.name}: точность на тесте (n = {n_grid})"
        if n_fin and n_fin != n_grid:  # the final model is scored on its own test split
            title = f"{self.study.name}: точность на тесте (сетка: n = {n_grid}; ФИНАЛ: n = {n_fin})"
        chart = figures.accuracy_bar_chart(rows + ([fin] if fin else []), self.configs(),
                                           title=title)
        out = []
        if self.out_dir:
            folder = Path(self.out_dir)
            folder.mkdir(parents=True, exist_ok=True)
            for ext in ("png", "svg"):
                chart.savefig(folder / f"{self.study.name}-accuracy.{ext}",
                              dpi=150 if ext == "png" else None)
            out.append(f"диаграмма сохранена: "
                       f"{typed_path(folder / (self.study.name + '-accuracy.png'))} и .svg")
        return out + [chart]

    def curves(self) -> list:
        histories = {name: self.store.epochs(i) for name, i in self.members() if self.store.get(i)}
        return [figures.training_curves(histories)]

    def answer(self):
        """The study's answer: the final model once it is done, else the grid's best."""
        fin = self.final_row()
        return fin if fin is not None and fin.status == "done" else tables.best_row(self.rows())

    def confusion(self) -> list:
        shown = self.answer()
        if shown is None:
            return ["нет завершённых экспериментов с точностью на валидации"]
        res = shown.result
        which = "финальная модель" if shown.final else "лучшая модель"
        return [f"{which}: {shown.name} (валидация {fmt.pct(shown.val_acc)}, тест "
                f"{fmt.pct(shown.test_acc)})",
                figures.confusion_matrix(res.confusion, res.classes,
                                         title=f"{shown.name}: матрица ошибок, % от истинного класса"),
                figures.per_class(res.per_class, res.classes, title=f"{shown.name}: точность по классам")]

    # -------------------------------------------------------------- the best and final models

    def best_models(self) -> list:
        best, fin = tables.best_row(self.rows()), self.final_row()
        if best is None:
            return ["выбирать пока не из чего"]
        out = self._model_block(best, "Лучшая модель** (выбрана по точности на валидации)",
                                self.sizes)
        if fin is not None and fin.status == "done":
            d = self.store.description(fin.exp_id)
            out += self._model_block(
                fin, "Финальная модель — ответ исследования**",
                {"val": 0, "test": tables.test_n(fin.result) or self.sizes["test"]},
                title="Финальная модель (конфигурация, лучшая по валидации, обучена на всех "
                      "обучающих изображениях)", chosen=ru.final_reason(d.final or {}),
                trained_on=(d.split_sizes or {}).get("train"))
        elif self.study.final is not None:
            out.append("финальная стадия ещё не выполнена: ответ исследования пока — лучшая "
                       "модель сетки")
        return out

    def _model_block(self, row, heading: str, sizes: dict, trained_on=None, **block) -> list:
        d = self.store.description(row.exp_id)
        device = (self.store.environment(row.exp_id) or {}).get("device", self.env["device"])
        on = f", обучена на всех {trained_on} обучающих изображениях" if trained_on else ""
        val = f", точность на валидации {fmt.pct(row.val_acc)}" if row.val_acc is not None else ""
        return [Markdown(f"**{heading}: `{row.name}` — исходная модель `{d.arch or row.model}`, "
                         f"режим переноса «{ru.regime(row.regime)}»{on}{val}, точность на тесте "
                         f"**{fmt.pct(row.test_acc)}**."),
                "\n".join(ru.best_block(row, d, row.result, sizes, device=device, **block))]

    # -------------------------------------------------------------- code and conclusions

    def code(self) -> list:
        """The package's own source of what trained the models, and which commit trained them."""
        from .notebook import code_html
        envs = (self.store.environment(i) for _, i in self.members())
        trained = sorted({ru.git_text(e) for e in envs if e})  # a skip trained nothing
        return [f"код ниже: {ru.git_text(self.env)}\n"
                f"эксперименты обучены: {'; '.join(trained) or 'нет записей'}", Html(code_html())]

    def conclusions(self) -> list:
        fin = self.final_row()
        f = final_stage.describe(self.store, fin.exp_id) if fin is not None and \
            fin.status == "done" else None
        final = None if f is None else {
            "name": f["name"], "parent": f["chosen"].get("parent"), "val_acc": None,
            "test_acc": f["test_acc"], "epochs": f["epochs"], "resolution": f["resolution"],
            "train_size": f["train_images"], "test_size": f["test_n"],
            "test_acc_no_tta": f["test_acc_no_tta"], "seconds": f.get("seconds"),
            "budget": f.get("budget")}
        return [Markdown(conclusions.conclusions(self.rows(), self.configs(), self.sizes,
                                                 final=final, final_row=fin))]
