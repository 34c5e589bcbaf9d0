"""Collect the jobs of an evaluation sweep into one summary.

`python -m t2i_align.evaluate -m checkpoint=a,b,c eval.guidance_scale=3,5` runs one job per
combination, each in <sweep dir>/<job number>/ with its results.json and the Hydra overrides
that made it (.hydra/overrides.yaml). At the end of the sweep the SweepSummary callback (wired in
conf/evaluate.yaml) writes into the sweep directory:
  summary.csv / summary.json / summary.md - every job's rows, with a "job" column (its overrides),
  reward_vs_step.png                       - reward against training step for every checkpoint,
  summary.html                             - the table, the plot and links to each job's report.
For sweeps run elsewhere (Slurm array jobs, several machines) the same summary is made by hand:
  python -m t2i_align.evaluation.sweep <sweep dir>
"""

import argparse
import html
import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback

from .aggregate import plot_reward_vs_step
from .report import html_table, page, write_tables

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
    """Write summary.{csv,json,md}, reward_vs_step.png and summary.html into `sweep_dir`."""
    sweep_dir = Path(sweep_dir)
    rows, jobs = collect_rows(sweep_dir)
    if not rows:
        raise FileNotFoundError(f"no <job>/results.json under {sweep_dir}: nothing to summarise")
    write_tables(rows, sweep_dir, stem="summary", first_columns=("job",))
    plot = plot_reward_vs_step(rows, sweep_dir / "reward_vs_step.png", baseline)
    labels = job_labels(jobs)
    links = "".join(f"<li><a href='{html.escape(j.name)}/report.html'>{html.escape(labels[j])}</a></li>"
                    for j in jobs if (j / "report.html").is_file())
    body = ("<h2>All jobs</h2>" + html_table(rows, ("job",)) +
            ("" if plot is None else "<h2>Reward vs training step</h2><p><img src='reward_vs_step.png'></p>") +
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
