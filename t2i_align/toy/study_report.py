"""The toy study's analysis: choose each method's setting on the validation prompts, report it on the
test prompts with intervals clustered by prompt and differences paired with the base.

Statistics (README.md, Evaluation, "Statistics"): an item is (prompt, sampling seed, training seed);
seeds are nested in prompts, so every mean is taken per prompt first (over sampling seeds and the
training seeds of the setting) and the 95% interval is a Student t interval over the prompts.
A gain is the paired difference aligned - base per (prompt, sampling seed), averaged per prompt
(the base is the same model for every training seed). Between-seed variation is reported on its
own (the standard deviation of the per-seed rates), because three training seeds are too few to
fold into one interval honestly. Method comparisons (e.g. MaPO - DPO) are paired per prompt too,
and a Holm correction is applied over the comparisons of the mismatch table.

The neon rate is the toy_style metric, which also FILTERED the preference set (the builder keeps
a pair only when the metric says chosen is neon and rejected plain): its gain is the target of
training, not independent evidence; colour and shape are the guards that played no part in it.

Model selection: for each (level, method), the setting with the highest validation neon rate among
those whose validation colour and shape rates stay within GUARD of the base's; if none does, the
highest neon + colour + shape. The test prompts never take part in the choice.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from t2i_align.evaluation.metrics import holm_adjust, mean_confidence_interval, paired_difference

METRICS = ("neon", "colour", "shape")
GUARD = 0.15


def load_results(out: Path) -> tuple[dict, list[dict]]:
    prepared = json.loads((out / "prepared.json").read_text())
    results = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/result.json"))]
    return prepared, results


def per_prompt(rows: list[dict], metric: str) -> dict[str, float]:
    """{prompt: mean of `metric` over that prompt's items}."""
    sums: dict[str, list[float]] = {}
    for r in rows:
        sums.setdefault(r["prompt"], []).append(r[metric])
    return {p: sum(v) / len(v) for p, v in sums.items()}


def _pooled(runs: list[dict], split: str) -> list[dict]:
    return [row for run in runs for row in run[split]]


def summarise(runs: list[dict], base_rows: list[dict], split: str) -> dict:
    """Rates of a setting's runs (pooled over training seeds) on `split`, with clustered intervals,
    the paired difference to the base, and the per-seed spread."""
    pooled = _pooled(runs, split)
    out = {"n_prompts": len({r["prompt"] for r in pooled}), "n_sampling_seeds": len({r["seed"] for r in pooled}),
           "n_training_seeds": len(runs)}
    for metric in METRICS:
        keys = [(r["prompt"], r["seed"]) for r in pooled]
        base = {(r["prompt"], r["seed"]): r[metric] for r in base_rows}
        prompts = [k[0] for k in keys]
        mean, low, high = mean_confidence_interval([r[metric] for r in pooled], clusters=prompts)
        diff = dict(zip(("diff", "low", "high", "p"),
                        paired_difference([r[metric] for r in pooled], [base[k] for k in keys], clusters=prompts)))
        seed_rates = [statistics.fmean(r[metric] for r in run[split]) for run in runs]
        out[metric] = {"mean": mean, "low": low, "high": high, "diff": diff["diff"], "diff_low": diff["low"],
                       "diff_high": diff["high"], "p": diff["p"],
                       "seed_sd": statistics.stdev(seed_rates) if len(seed_rates) > 1 else 0.0,
                       "per_seed": seed_rates}
    return out


def base_summary(base_rows: list[dict]) -> dict:
    prompts = [r["prompt"] for r in base_rows]
    return {m: dict(zip(("mean", "low", "high"), mean_confidence_interval([r[m] for r in base_rows], clusters=prompts)))
            for m in METRICS}


def steps_to_half_gain(runs: list[dict], base_val_neon: float) -> float | None:
    """Training steps until the validation neon gain first reaches half of its final value (linear
    interpolation between checkpoints; curve averaged over training seeds). None without a gain."""
    steps = sorted({int(s) for run in runs for s in run["curve"]})
    curve = [statistics.fmean(statistics.fmean(r["neon"] for r in run["curve"][str(s)])
                              for run in runs if str(s) in run["curve"]) - base_val_neon for s in steps]
    if not curve or curve[-1] < 0.05:
        return None
    half = curve[-1] / 2
    previous_step, previous_gain = 0, 0.0
    for step, gain in zip(steps, curve):
        if gain >= half:
            return previous_step + (half - previous_gain) / (gain - previous_gain) * (step - previous_step)
        previous_step, previous_gain = step, gain
    return None


def choose_setting(candidates: dict[str, dict], base_val: dict) -> str:
    """The validation choice (module docstring): candidates {setting: summarise(..., "val")}."""
    ok = [name for name, s in candidates.items()
          if all(s[m]["mean"] >= base_val[m]["mean"] - GUARD for m in ("colour", "shape"))]
    if ok:
        return max(ok, key=lambda name: candidates[name]["neon"]["mean"])
    return max(candidates, key=lambda name: sum(candidates[name][m]["mean"] for m in METRICS))


def analyse(out: Path) -> dict:
    prepared, results = load_results(out)
    base = prepared["base"]
    base_val, base_test = base_summary(base["val"]), base_summary(base["test"])
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["level"], r["method"], json.dumps(r["setting"], sort_keys=True)), []).append(r)
    grid, selected = [], []
    for level in dict.fromkeys(k[0] for k in groups):
        for method in dict.fromkeys(k[1] for k in groups if k[0] == level):
            settings = {k[2]: v for k, v in groups.items() if k[0] == level and k[1] == method}
            val = {name: summarise(runs, base["val"], "val") for name, runs in settings.items()}
            for name, runs in settings.items():
                grid.append({"level": level, "method": method, "setting": json.loads(name),
                             "seeds": sorted(r["seed"] for r in runs), "val": val[name]})
            choice = choose_setting(val, base_val)
            runs = settings[choice]
            selected.append({
                "level": level, "method": method, "setting": json.loads(choice),
                "seeds": sorted(r["seed"] for r in runs), "test": summarise(runs, base["test"], "test"),
                "steps_to_half_gain": steps_to_half_gain(runs, base_val["neon"]["mean"]),
                "s_per_step": statistics.median(r["s_per_step"] for r in runs if r["s_per_step"]),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                "train_minutes": statistics.fmean(r["train_seconds"] for r in runs) / 60})
    comparisons = method_comparisons(selected, {(s["level"], s["method"]): groups[
        (s["level"], s["method"], json.dumps(s["setting"], sort_keys=True))] for s in selected})
    return {"base": {"val": base_val, "test": base_test}, "mismatch": prepared["mismatch"], "grid": grid,
            "selected": selected, "comparisons": comparisons, "n_runs": len(results),
            "total_train_minutes": sum(r["train_seconds"] for r in results) / 60}


def method_comparisons(selected: list[dict], runs: dict) -> list[dict]:
    """MaPO (reference-free) minus each other method, per level, on the test neon rate, paired per
    prompt (both pooled over their training seeds); then the change of that difference from the
    low to the high mismatch level (MaPO's claim predicts it is positive for the reference-based
    methods). Holm-adjusted over all rows."""
    rows = []
    for level in dict.fromkeys(s["level"] for s in selected):
        if (level, "mapo") not in runs:
            continue
        mapo = per_prompt(_pooled(runs[(level, "mapo")], "test"), "neon")
        for other in ("dpo", "dcpo", "inpo", "sft"):
            if (level, other) not in runs:
                continue
            theirs = per_prompt(_pooled(runs[(level, other)], "test"), "neon")
            prompts = sorted(mapo)
            diff = dict(zip(("diff", "low", "high", "p"),
                            paired_difference([mapo[p] for p in prompts], [theirs[p] for p in prompts], clusters=prompts)))
            rows.append({"level": level, "comparison": f"mapo - {other}", "diff": diff["diff"],
                         "low": diff["low"], "high": diff["high"], "p": diff["p"], "n_prompts": len(prompts)})
    # The claim itself: does MaPO's advantage grow with the mismatch? (high - low), paired by prompt.
    levels = list(dict.fromkeys(s["level"] for s in selected))
    if {"low", "high"} <= set(levels):
        for other in ("dpo", "dcpo", "inpo", "sft"):
            needed = [(lv, m) for lv in ("low", "high") for m in ("mapo", other)]
            if not all(k in runs for k in needed):
                continue
            gap = {lv: {p: per_prompt(_pooled(runs[(lv, "mapo")], "test"), "neon")[p]
                        - per_prompt(_pooled(runs[(lv, other)], "test"), "neon")[p]
                        for p in per_prompt(_pooled(runs[(lv, "mapo")], "test"), "neon")} for lv in ("low", "high")}
            prompts = sorted(gap["low"])
            diff = dict(zip(("diff", "low", "high", "p"), paired_difference(
                [gap["high"][p] for p in prompts], [gap["low"][p] for p in prompts], clusters=prompts)))
            rows.append({"level": "high - low", "comparison": f"(mapo - {other})", "diff": diff["diff"],
                         "low": diff["low"], "high": diff["high"], "p": diff["p"], "n_prompts": len(prompts)})
    for row, adjusted in zip(rows, holm_adjust([r["p"] for r in rows])):
        row["p_holm"] = adjusted
    return rows


def _fmt(s: dict) -> str:
    return f"{s['mean']:.2f} [{s['low']:.2f}, {s['high']:.2f}]"


def _diff(s: dict) -> str:
    return f"{s['diff']:+.2f} [{s['diff_low']:+.2f}, {s['diff_high']:+.2f}]"


def markdown(report: dict) -> str:
    sel = report["selected"]
    n = sel[0]["test"] if sel else {"n_prompts": 0, "n_sampling_seeds": 0}
    lines = [f"Test: {n['n_prompts']} held-out prompts x {n['n_sampling_seeds']} sampling seeds per training seed; "
             "rates pooled over training seeds; 95% intervals clustered by prompt (t over prompt means); "
             "gains paired with the base per prompt. Neon is the metric that filtered the data (not independent).",
             "",
             "| mismatch | method | setting (val) | seeds | neon | neon gain | seed sd | colour gain | shape gain "
             "| steps to half gain | s/step | peak RSS MB |",
             "|---|---|---|---|---|---|---:|---|---|---:|---:|---:|"]
    for s in sel:
        t = s["test"]
        half = f"{s['steps_to_half_gain']:.0f}" if s["steps_to_half_gain"] is not None else "-"
        lines.append(f"| {s['level']} | {s['method']} | {setting_label(s['setting'])} | {len(s['seeds'])} | "
                     f"{_fmt(t['neon'])} | {_diff(t['neon'])} | {t['neon']['seed_sd']:.2f} | {_diff(t['colour'])} | "
                     f"{_diff(t['shape'])} | {half} | {s['s_per_step']:.3f} | {s['peak_rss_mb']:.0f} |")
    b = report["base"]["test"]
    lines += ["", f"Base on the test prompts: neon {_fmt(b['neon'])}, colour {_fmt(b['colour'])}, shape {_fmt(b['shape'])}.",
              "", "Reference mismatch (the base's denoising error on the chosen minus the rejected images; "
              "under the plain training caption, and under the neon-prefixed caption):", ""]
    for level, m in report["mismatch"].items():
        a, b = m["plain_caption"], m["neon_caption"]
        lines.append(f"- {level}: plain caption {a['gap']:+.4f} (chosen {a['chosen']:.4f}, rejected {a['rejected']:.4f}); "
                     f"neon caption {b['gap']:+.4f} (chosen {b['chosen']:.4f}); {a['pairs']} pairs")
    if report["comparisons"]:
        lines += ["", "| mismatch | comparison (test neon rate) | difference | p | p (Holm) |", "|---|---|---|---:|---:|"]
        for c in report["comparisons"]:
            lines.append(f"| {c['level']} | {c['comparison']} | {c['diff']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}] | "
                         f"{c['p']:.3g} | {c['p_holm']:.3g} |")
    lines += ["", "Validation grid (rates pooled over training seeds; the chosen setting per row group is in the table above):",
              "", "| mismatch | method | setting | seeds | neon | colour | shape | neon per seed |", "|---|---|---|---|---|---|---|---|"]
    for g in report["grid"]:
        v = g["val"]
        lines.append(f"| {g['level']} | {g['method']} | {setting_label(g['setting'])} | {len(g['seeds'])} | {_fmt(v['neon'])} | "
                     f"{_fmt(v['colour'])} | {_fmt(v['shape'])} | {', '.join(f'{x:.2f}' for x in v['neon']['per_seed'])} |")
    lines += ["", f"{report['n_runs']} runs, {report['total_train_minutes']:.0f} min of training in all."]
    return "\n".join(lines)


def setting_label(setting: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(setting.items()))


def write_report(out: Path) -> str:
    """results.json (everything, machine-readable) and results.md in `out`; returns the markdown."""
    out = Path(out)
    report = analyse(out)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (out / "results.md").write_text(text + "\n")
    return text
