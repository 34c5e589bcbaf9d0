"""Results tables (CSV, JSON, markdown) and a static HTML report.

Every table states what a reviewer needs to read it (README.md, Evaluation, "Statistics"):
n_prompts and n_seeds, intervals clustered by prompt, paired differences to the baseline with
their p-values, the multiple-comparison correction and how many comparisons it covered, and
which rewards were used on the training data (their gains are not independent evidence).
"""

import csv
import html
import json
import math
import os
from pathlib import Path

COLUMNS = ["model", "reward", "group", "step", "n_prompts", "n_seeds", "n", "mean", "ci_low", "ci_high",
           "diff", "diff_low", "diff_high", "p_value", "p_adj", "significant", "win_rate", "win_low", "win_high",
           "used_in_training_data", "correction", "n_comparisons"]
DATA_MARK = "\u2020"  # dagger after a reward used on the training data
PLOT_TITLES = {"reward_vs_step": "Reward vs training step",
               "comparison": "Base vs aligned: means and paired differences"}


def write_tables(rows: list[dict], run_dir: Path, stem: str = "results", first_columns=(),
                 confidence: float = 0.95) -> None:
    """<stem>.csv, <stem>.json and <stem>.md (the table, then its notes) in `run_dir`;
    `first_columns` (e.g. a sweep's job) go before the standard ones."""
    columns = [*first_columns, *COLUMNS]
    with open(run_dir / f"{stem}.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows([{k: row.get(k) for k in columns} for row in rows])
    (run_dir / f"{stem}.json").write_text(json.dumps(rows, indent=2))
    notes = "".join(f"\n- {n}" for n in table_notes(rows, confidence))
    (run_dir / f"{stem}.md").write_text(markdown_table(rows, first_columns) + "\n" + notes + "\n")


def _fmt(value, digits=4):
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _p(value):
    """p-values: 4 decimals, '<0.0001' below."""
    if value is not None and not math.isnan(value) and value < 1e-4:
        return "<0.0001"
    return _fmt(value)


def _ci(row, low, high, digits=4):
    return "" if row.get(low) is None else f"[{_fmt(row[low], digits)}, {_fmt(row[high], digits)}]"


def _optional_columns(rows: list[dict]) -> list[str]:
    """group / step columns only when they say something."""
    extra = []
    if any(r.get("group", "all") != "all" for r in rows):
        extra.append("group")
    if any(r.get("step") is not None for r in rows):
        extra.append("step")
    return extra


HEADERS = ["n_prompts", "n_seeds", "mean", "95% CI", "diff vs baseline", "95% CI", "p", "p_adj", "significant",
           "win rate vs baseline", "95% CI", "n"]


def _cells(r: dict, lead: list[str]) -> list[str]:
    """One row as text cells: the lead columns, then HEADERS' columns."""
    def lead_cell(c):
        text = "" if r.get(c) is None else str(r.get(c))
        return text + f" {DATA_MARK}" if c == "reward" and r.get("used_in_training_data") else text
    significant = "" if r.get("significant") is None else ("yes" if r["significant"] else "no")
    return [*(lead_cell(c) for c in lead), str(r.get("n_prompts", "")), str(r.get("n_seeds", "")),
            _fmt(r["mean"]), _ci(r, "ci_low", "ci_high"), _fmt(r.get("diff")), _ci(r, "diff_low", "diff_high"),
            _p(r.get("p_value")), _p(r.get("p_adj")), significant, _fmt(r.get("win_rate"), 3),
            _ci(r, "win_low", "win_high", 3), str(r["n"])]


def markdown_table(rows: list[dict], first_columns=()) -> str:
    lead = [*first_columns, "model", "reward", *_optional_columns(rows)]
    lines = ["| " + " | ".join(lead + HEADERS) + " |",
             "|" + "---|" * len(lead) + "---:|---:|---:|---|---:|---|---:|---:|---|---:|---|---:|"]
    lines += ["| " + " | ".join(_cells(r, lead)) + " |" for r in rows]
    return "\n".join(lines)


def html_table(rows: list[dict], first_columns=()) -> str:
    lead = [*first_columns, "model", "reward", *_optional_columns(rows)]
    out = ["<table class='results'><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in lead + HEADERS) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r, lead)) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _counts(values) -> str:
    """'36' or '4, 6' (distinct values, e.g. over a sweep's jobs)."""
    distinct = sorted(set(values))
    return ", ".join(str(v) for v in distinct)


def table_notes(rows: list[dict], confidence: float = 0.95) -> list[str]:
    """The sentences under a results table: design and interval method, what the comparison
    columns are, the correction and how many comparisons it covered (per job for a sweep), and
    a warning per reward used on the training data."""
    if not rows:
        return []
    level = f"{100 * confidence:g}%"
    overall = [r for r in rows if r.get("group", "all") == "all" and r.get("n_prompts") is not None]
    design = (f"{_counts(r['n_prompts'] for r in overall)} prompts x {_counts(r['n_seeds'] for r in overall)} seeds. "
              if overall else "")
    notes = [f"{design}Intervals ({level}) are clustered by prompt: per-image scores are averaged per prompt, "
             "then a Student t interval (n_prompts - 1 df) over the prompt means; rates and win rates are "
             "clamped to [0, 1], differences of rates to [-1, 1]."]
    compared = [r for r in rows if r.get("p_value") is not None]
    if compared:
        notes.append("diff: candidate minus baseline per (prompt, seed), averaged per prompt, t interval over "
                     "prompts; p: two-sided paired t test over the prompt-mean differences; win rate: "
                     "per-prompt win fraction (ties half) averaged over prompts. Intervals are not adjusted "
                     "for multiple comparisons.")
        per_table = {(r.get("job"), r.get("correction"), r.get("n_comparisons")) for r in compared}
        corrections = {c for _, c, _ in per_table}
        counts = _counts(m for _, _, m in per_table)
        scope = "each job's table on its own" if any(j is not None for j, _, _ in per_table) else "this table"
        alpha = f"{1 - confidence:.3g}"
        if corrections == {"holm"}:
            notes.append(f"Holm-Bonferroni correction over the {counts} comparisons of {scope} (every reward x "
                         f"group x model vs the baseline): p_adj; significant = p_adj <= {alpha}.")
        else:
            notes.append(f"Multiple-comparison correction: {'/'.join(sorted(map(str, corrections)))} over the "
                         f"{counts} comparisons of {scope} (p_adj = p without one); significant = p_adj <= {alpha}. "
                         "With this many tests some differences look significant by chance.")
    data = list(dict.fromkeys(r["reward"] for r in rows if r.get("used_in_training_data")))
    for reward in data:
        notes.append(f"{DATA_MARK} {reward} was used on the training data (eval.data_rewards: it built, filtered "
                     "or was trained on it): its gain is not independent evidence.")
    if data and set(data) == {r["reward"] for r in rows}:
        notes.append("Every reward here was used on the training data: add one that played no part in training "
                     "(reward hacking shows up as a gap between them).")
    return notes


def notes_html(rows: list[dict], confidence: float = 0.95) -> str:
    items = "".join(f"<li class='{'caveat' if n.startswith(DATA_MARK) else 'note'}'>{html.escape(n)}</li>"
                    for n in table_notes(rows, confidence))
    return f"<ul class='notes'>{items}</ul>" if items else ""


STYLE = ("body{font-family:sans-serif;margin:2em}img{max-width:100%;height:auto}"
         ".scroll{max-width:100%;overflow-x:auto}.panels{display:flex;flex-wrap:wrap;gap:1em}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
         ".results td{white-space:nowrap}.caveat{color:#8a4b00;font-weight:bold}"
         ".gallery img{width:192px;height:192px;max-width:none;image-rendering:pixelated}"
         ".prompt{max-width:16em}")


# After load, count images that did not load (e.g. the report was moved without its image cache)
# and say so at the top of the page; the counts and the page's layout width (scrollWidth vs the
# window's innerWidth: the page must fit its width) land on <body data-*> for automated checks.
IMAGE_CHECK = ("<script>window.addEventListener('load',function(){var imgs=document.images,bad=0;"
               "for(var i=0;i<imgs.length;i++){if(!(imgs[i].complete&&imgs[i].naturalWidth>0))bad++;}"
               "document.body.dataset.images=imgs.length;document.body.dataset.brokenImages=bad;"
               "if(bad){var p=document.createElement('p');p.className='warning';p.textContent=bad+' of '+"
               "imgs.length+' images could not be loaded (paths are relative to this page and its image cache)';"
               "document.body.insertBefore(p,document.body.firstChild);}"
               "document.body.dataset.scrollWidth=document.documentElement.scrollWidth;"
               "document.body.dataset.innerWidth=window.innerWidth;});</script>")


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}.warning{{color:#b00;font-weight:bold}}</style>{IMAGE_CHECK}</head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")


def write_html(run_dir: Path, rows: list[dict], gallery: list[dict], model_names: list[str],
               reward_names: list[str], plot: Path | None = None) -> Path:
    """report.html: the results table and its notes, the plot (reward_vs_step.png or
    comparison.png, when there is one), the grid and, per prompt row, each model's image with its
    scores. Images are linked relative to the page; wide tables scroll inside their box so the
    page fits its width.

    gallery: [{"prompt", "seed", "images": {model: path}, "scores": {model: {reward: value}}}]."""
    def rel(path):
        return html.escape(os.path.relpath(path, run_dir))

    cells = ["<div class='scroll'><table class='gallery'><tr><th>prompt</th>" +
             "".join(f"<th>{html.escape(m)}</th>" for m in model_names) + "</tr>"]
    for item in gallery:
        cells.append(f"<tr><td class='prompt'>{html.escape(item['prompt'])}<br><small>seed {item['seed']}</small></td>")
        for m in model_names:
            scores = "<br>".join(f"{html.escape(k)} {item['scores'][m][k]:.3f}" for k in reward_names)
            cells.append(f"<td><img src='{rel(item['images'][m])}' alt='{html.escape(m)}'><br>"
                         f"<small>{scores}</small></td>")
        cells.append("</tr>")
    cells.append("</table></div>")
    plot_html = "" if plot is None else (
        f"<h2>{html.escape(PLOT_TITLES.get(Path(plot).stem, 'Plot'))}</h2>"
        f"<div class='panels'><img src='{rel(plot)}' alt='plot'></div>")
    body = ("<h2>Results</h2><div class='scroll'>" + html_table(rows) + "</div>" + notes_html(rows) + plot_html +
            "<h2>Grid</h2><p><img src='grid.png' alt='grid'></p><h2>Gallery</h2>" + "".join(cells))
    path = run_dir / "report.html"
    path.write_text(page("t2i_align evaluation", body), encoding="utf-8")
    return path
