"""Results tables (CSV, JSON, markdown) and a static HTML report."""

import csv
import html
import json
import os
from pathlib import Path

COLUMNS = ["model", "reward", "group", "step", "mean", "ci_low", "ci_high", "win_rate", "win_low", "win_high", "n"]


def write_tables(rows: list[dict], run_dir: Path, stem: str = "results", first_columns=()) -> None:
    """<stem>.csv, <stem>.json and <stem>.md in `run_dir`; `first_columns` (e.g. a sweep's job)
    go before the standard ones."""
    columns = [*first_columns, *COLUMNS]
    with open(run_dir / f"{stem}.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows([{k: row.get(k) for k in columns} for row in rows])
    (run_dir / f"{stem}.json").write_text(json.dumps(rows, indent=2))
    (run_dir / f"{stem}.md").write_text(markdown_table(rows, first_columns) + "\n")


def _fmt(value, digits=4):
    return "" if value is None else f"{value:.{digits}f}"


def _optional_columns(rows: list[dict]) -> list[str]:
    """group / step columns only when they say something."""
    extra = []
    if any(r.get("group", "all") != "all" for r in rows):
        extra.append("group")
    if any(r.get("step") is not None for r in rows):
        extra.append("step")
    return extra


def markdown_table(rows: list[dict], first_columns=()) -> str:
    lead = [*first_columns, "model", "reward", *_optional_columns(rows)]
    lines = ["| " + " | ".join(lead) + " | mean | 95% CI | win rate vs baseline | 95% CI | n |",
             "|" + "---|" * len(lead) + "---:|---|---:|---|---:|"]
    for r in rows:
        win_ci = "" if r.get("win_rate") is None else f"[{_fmt(r['win_low'], 3)}, {_fmt(r['win_high'], 3)}]"
        cells = " | ".join("" if r.get(c) is None else str(r.get(c)) for c in lead)
        lines.append(f"| {cells} | {_fmt(r['mean'])} | [{_fmt(r['ci_low'])}, "
                     f"{_fmt(r['ci_high'])}] | {_fmt(r.get('win_rate'), 3)} | {win_ci} | {r['n']} |")
    return "\n".join(lines)


def html_table(rows: list[dict], first_columns=()) -> str:
    lead = [*first_columns, "model", "reward", *_optional_columns(rows)]
    out = ["<table class='results'><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in lead) +
           "<th>mean</th><th>95% CI</th><th>win rate</th><th>95% CI</th><th>n</th></tr>"]
    for r in rows:
        win = "" if r.get("win_rate") is None else f"{r['win_rate']:.3f}"
        win_ci = "" if r.get("win_rate") is None else f"[{r['win_low']:.3f}, {r['win_high']:.3f}]"
        out.append("<tr>" + "".join(f"<td>{html.escape('' if r.get(c) is None else str(r.get(c)))}</td>"
                                    for c in lead) +
                   f"<td>{r['mean']:.4f}</td><td>[{r['ci_low']:.4f}, {r['ci_high']:.4f}]</td>"
                   f"<td>{win}</td><td>{win_ci}</td><td>{r['n']}</td></tr>")
    out.append("</table>")
    return "".join(out)


STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
         "padding:4px 8px;vertical-align:top}.gallery img{width:192px;height:192px;image-rendering:pixelated}"
         ".prompt{max-width:16em}")


# After load, count images that did not load (e.g. the report was moved without its image cache)
# and say so at the top of the page; the counts also land on <body data-*> for automated checks.
IMAGE_CHECK = ("<script>window.addEventListener('load',function(){var imgs=document.images,bad=0;"
               "for(var i=0;i<imgs.length;i++){if(!(imgs[i].complete&&imgs[i].naturalWidth>0))bad++;}"
               "document.body.dataset.images=imgs.length;document.body.dataset.brokenImages=bad;"
               "if(bad){var p=document.createElement('p');p.className='warning';p.textContent=bad+' of '+"
               "imgs.length+' images could not be loaded (paths are relative to this page and its image cache)';"
               "document.body.insertBefore(p,document.body.firstChild);}});</script>")


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}.warning{{color:#b00;font-weight:bold}}</style>{IMAGE_CHECK}</head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")


def write_html(run_dir: Path, rows: list[dict], gallery: list[dict], model_names: list[str],
               reward_names: list[str], plot: Path | None = None) -> Path:
    """report.html: the results table, the reward-vs-step plot (when there is one), the grid and,
    per prompt row, each model's image with its scores. Images are linked relative to the page.

    gallery: [{"prompt", "seed", "images": {model: path}, "scores": {model: {reward: value}}}]."""
    def rel(path):
        return html.escape(os.path.relpath(path, run_dir))

    cells = ["<table class='gallery'><tr><th>prompt</th>" +
             "".join(f"<th>{html.escape(m)}</th>" for m in model_names) + "</tr>"]
    for item in gallery:
        cells.append(f"<tr><td class='prompt'>{html.escape(item['prompt'])}<br><small>seed {item['seed']}</small></td>")
        for m in model_names:
            scores = "<br>".join(f"{html.escape(k)} {item['scores'][m][k]:.3f}" for k in reward_names)
            cells.append(f"<td><img src='{rel(item['images'][m])}' alt='{html.escape(m)}'><br>"
                         f"<small>{scores}</small></td>")
        cells.append("</tr>")
    cells.append("</table>")
    plot_html = "" if plot is None else f"<h2>Reward vs training step</h2><p><img src='{rel(plot)}' alt='plot'></p>"
    body = ("<h2>Results</h2>" + html_table(rows) + plot_html +
            "<h2>Grid</h2><p><img src='grid.png' alt='grid' style='max-width:100%'></p><h2>Gallery</h2>" +
            "".join(cells))
    path = run_dir / "report.html"
    path.write_text(page("t2i_align evaluation", body), encoding="utf-8")
    return path
