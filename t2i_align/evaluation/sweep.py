"""Collect the jobs of an evaluation sweep into one summary.

`python -m t2i_align.evaluate -m checkpoint=a,b,c eval.guidance_scale=3,5` runs one job per
combination, each in <sweep dir>/<job number>/ with its results.json and the Hydra overrides
that made it (.hydra/overrides.yaml). At the end of the sweep the SweepSummary callback (wired in
conf/evaluate.yaml) writes into the sweep directory:
  summary.csv / summary.json / summary.md - every job's rows, with a "job" column (its overrides),
  reward_vs_step.png                       - each line's paired difference to its OWN job's base
                                             against training step (comparison.png instead, one
                                             point per line, when no line has >= 2 steps),
  summary.html                             - the table, the plot and links to each job's report.
A line is a run (the model name before "@step") in one setting: the job's differing overrides
other than checkpoint / models. So a sweep over checkpoints gives one line over steps, a sweep
over eval.guidance_scale one line per job, each against that job's own base (the bases differ).
For sweeps run elsewhere (Slurm array jobs, several machines) the same summary is made by hand:
  python -m t2i_align.evaluation.sweep <sweep dir>
"""

import argparse
import html
import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback

from .aggregate import has_step_lines, paired_difference_figure, series_name
from .report import html_table, notes_html, page, write_tables
from t2i_align.errors import InputNotFoundError

log = logging.getLogger("t2i_align.sweep")


def _overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    import yaml

    return [str(o) for o in yaml.safe_load(path.read_text()) or []]


def job_labels(jobs: list[Path]) -> dict[Path, str]:
    """Each job's label: the overrides that differ between the jobs (what the sweep swept), or
    the folder name when there are none."""
    overrides = {job: _overrides(job) for job in jobs}
    shared = set.intersection(*(set(o) for o in overrides.values())) if overrides else set()
    return {job: " ".join(o for o in overrides[job] if o not in shared or len(jobs) == 1) or job.name
            for job in jobs}


MODEL_KEYS = ("checkpoint", "models")  # overrides that choose what is evaluated, not how


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def job_settings(jobs: list[Path]) -> dict[Path, str]:
    """Each job's setting: its differing overrides (job_labels) without those that only choose the
    models (checkpoint=, models=); "" when nothing else differs."""
    overrides = {job: _overrides(job) for job in jobs}
    shared = set.intersection(*(set(o) for o in overrides.values())) if overrides else set()
    return {job: " ".join(o for o in overrides[job] if o not in shared and _key(o) not in MODEL_KEYS)
            for job in jobs}


def line_function(rows: list[dict], jobs: list[Path]):
    """row -> its line in the sweep plot: "<run> <setting>" (see the module docstring)."""
    labels, settings = job_labels(jobs), job_settings(jobs)
    setting_of = {labels[j]: settings[j] for j in jobs}
    return lambda r: f"{series_name(r['model'])} {setting_of.get(r.get('job'), '')}".strip()


def plot_sweep(rows: list[dict], jobs: list[Path], sweep_dir: Path, baseline: str = "base") -> Path | None:
    """reward_vs_step.png (a line has >= 2 steps) or comparison.png: paired differences of every
    job's models to that job's own base (aggregate.paired_difference_figure). None when no job
    compared a model with its base."""
    line_of = line_function(rows, jobs)
    fig = paired_difference_figure(rows, line_of, baseline)
    if fig is None:
        return None
    comparison = [r for r in rows if r.get("group", "all") == "all" and r.get("diff") is not None]
    out = sweep_dir / ("reward_vs_step.png" if has_step_lines(comparison, line_of) else "comparison.png")
    import matplotlib.pyplot as plt

    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def collect_rows(sweep_dir: Path) -> tuple[list[dict], list[Path]]:
    """Every job's results.json rows (with "job" = its label), jobs in numeric order."""
    jobs = sorted((p.parent for p in sweep_dir.glob("*/results.json")),
                  key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    labels = job_labels(jobs)
    rows = []
    for job in jobs:
        rows += [{"job": labels[job], **row} for row in json.loads((job / "results.json").read_text())]
    return rows, jobs


def summarise_sweep(sweep_dir, baseline: str = "base") -> Path:
    """Write summary.{csv,json,md}, the plot (plot_sweep) and summary.html into `sweep_dir`."""
    sweep_dir = Path(sweep_dir)
    rows, jobs = collect_rows(sweep_dir)
    if not rows:
        raise InputNotFoundError(f"no <job>/results.json under {sweep_dir}: nothing to summarise")
    write_tables(rows, sweep_dir, stem="summary", first_columns=("job",))
    plot = plot_sweep(rows, jobs, sweep_dir, baseline)
    labels = job_labels(jobs)
    links = "".join(f"<li><a href='{html.escape(j.name)}/report.html'>{html.escape(labels[j])}</a></li>"
                    for j in jobs if (j / "report.html").is_file())
    title = "Paired difference to each job's own base"
    if plot is not None and plot.stem == "reward_vs_step":
        title += " vs training step"
    body = ("<h2>All jobs</h2><div class='scroll'>" + html_table(rows, ("job",)) + "</div>" + notes_html(rows) +
            ("" if plot is None else f"<h2>{html.escape(title)}</h2><p><img src='{plot.name}' alt='plot'></p>") +
            f"<h2>Job reports</h2><ul>{links}</ul>")
    out = sweep_dir / "summary.html"
    out.write_text(page("t2i_align evaluation sweep", body), encoding="utf-8")
    log.info("sweep summary of %d jobs: %s", len(jobs), out)
    return out


class SweepSummary(Callback):
    """Hydra callback: summarise the sweep directory when a multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            summarise_sweep(config.hydra.sweep.dir, baseline=config.eval.baseline)
        except FileNotFoundError as error:  # every job failed: say so, do not mask their errors
            log.warning("%s", error)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Summarise an evaluation sweep directory.")
    parser.add_argument("sweep_dir")
    parser.add_argument("--baseline", default="base")
    args = parser.parse_args(argv)
    print(summarise_sweep(args.sweep_dir, args.baseline))


if __name__ == "__main__":
    main()
