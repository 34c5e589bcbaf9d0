"""Run the toy Pick-Style experiment with every method and print one table.

    python scripts/toy_methods.py [--methods mapo,dpo,sft,dcpo,inpo] [--out outputs/toy_methods] [extra overrides]

Each method is `python -m t2i_align.train +exp=toy_<method>` (same toy set, cached after the
first build; same held-out evaluation with the same seeds), in its own run dir. The table gives,
per method, the neon-style / colour / shape rates on held-out plain prompts for the base and the
aligned model, the training steps and the wall time of training + evaluation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("mapo", "dpo", "sft", "dcpo", "inpo")


def run_method(method: str, out: Path, extra: list[str]) -> dict:
    run_dir = out / method
    started = time.time()
    subprocess.run([sys.executable, "-m", "t2i_align.train", f"+exp=toy_{method}", f"run_dir={run_dir}", *extra],
                   cwd=ROOT, check=True)
    seconds = time.time() - started
    rows = json.loads((run_dir / "eval" / "results.json").read_text())
    rates = {(r["model"], r["reward"]): r for r in rows if r["group"] == "all"}
    info = json.loads((run_dir / "final" / "training_info.json").read_text())
    return {"method": method, "steps": info["steps"], "seconds": seconds, "n": rates[("base", "toy_style")]["n"],
            **{f"{kind}_{side}": rates[(model, f"toy_{kind}")]["mean"]
               for kind in ("style", "colour", "shape") for side, model in (("base", "base"), ("after", method))}}


def table(results: list[dict]) -> str:
    lines = ["| method | neon rate base -> aligned | colour base -> aligned | shape base -> aligned | steps | time (train + eval) |",
             "|---|---|---|---|---:|---:|"]
    for r in results:
        lines.append(f"| {r['method']} | {r['style_base']:.2f} -> {r['style_after']:.2f} | {r['colour_base']:.2f} -> "
                     f"{r['colour_after']:.2f} | {r['shape_base']:.2f} -> {r['shape_after']:.2f} | {r['steps']} | "
                     f"{r['seconds'] / 60:.1f} min |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default=str(ROOT / "outputs" / "toy_methods"))
    args, extra = parser.parse_known_args(argv)
    out = Path(args.out)
    results = [run_method(m, out, extra) for m in args.methods.split(",")]
    (out / "results.json").write_text(json.dumps(results, indent=2))
    text = table(results)
    (out / "results.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
