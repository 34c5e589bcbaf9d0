"""Results tables (CSV, JSON, markdown) and a static HTML report."""

import csv
import html
import json
import os
from pathlib import Path

COLUMNS = ["model", "reward", "mean", "ci_low", "ci_high", "win_rate", "win_low", "win_high", "n"]


def write_tables(rows: list[dict], run_dir: Path) -> None:
    """results.csv, results.json and results.md in `run_dir`."""
    with open(run_dir / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows([{k: row.get(k) for k in COLUMNS} for row in rows])
    (run_dir / "results.json").write_text(json.dumps(rows, indent=2))
    (run_dir / "results.md").write_text(markdown_table(rows) + "\n")


def _fmt(value, digits=4):
    return "" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | reward | mean | 95% CI | win rate vs baseline | 95% CI | n |",
             "|---|---|---:|---|---:|---|---:|"]
    for r in rows:
        win_ci = "" if r.get("win_rate") is None else f"[{_fmt(r['win_low'], 3)}, {_fmt(r['win_high'], 3)}]"
        lines.append(f"| {r['model']} | {r['reward']} | {_fmt(r['mean'])} | [{_fmt(r['ci_low'])}, "
                     f"{_fmt(r['ci_high'])}] | {_fmt(r.get('win_rate'), 3)} | {win_ci} | {r['n']} |")
    return "\n".join(lines)


def write_html(run_dir: Path, rows: list[dict], gallery: list[dict], model_names: list[str],
               reward_names: list[str]) -> Path:
    """report.html: the results table and, per prompt row, each model's image with its scores.

    gallery: [{"prompt", "seed", "images": {model: path}, "scores": {model: {reward: value}}}]."""
    def rel(path):
        return html.escape(os.path.relpath(path, run_dir))

    table = ["<table><tr><th>model</th><th>reward</th><th>mean</th><th>95% CI</th><th>win rate</th>"
             "<th>95% CI</th><th>n</th></tr>"]
    for r in rows:
        win = "" if r.get("win_rate") is None else f"{r['win_rate']:.3f}"
        win_ci = "" if r.get("win_rate") is None else f"[{r['win_low']:.3f}, {r['win_high']:.3f}]"
        table.append(f"<tr><td>{html.escape(r['model'])}</td><td>{html.escape(r['reward'])}</td>"
                     f"<td>{r['mean']:.4f}</td><td>[{r['ci_low']:.4f}, {r['ci_high']:.4f}]</td>"
                     f"<td>{win}</td><td>{win_ci}</td><td>{r['n']}</td></tr>")
    table.append("</table>")
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
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>t2i_align evaluation</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;vertical-align:top}.gallery img{width:192px;height:192px;image-rendering:pixelated}"
            ".prompt{max-width:16em}</style></head><body><h1>Evaluation</h1><h2>Results</h2>"
            + "".join(table) + "<p><img src='grid.png' alt='grid' style='max-width:100%'></p><h2>Gallery</h2>"
            + "".join(cells) + "</body></html>")
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
