"""scripts/inversion_noise.py runs on the shipped toy models and prints one row per setting."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "inversion_noise.py"


def test_inversion_noise_table(capsys):
    spec = importlib.util.spec_from_file_location("inversion_noise", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--images", "2"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| toy_")]
    assert len(rows) == 12
    stds = [float(row.split("|")[4]) for row in rows]
    assert all(0.0 < s < 2.0 for s in stds)
    flow = [row for row in rows if row.startswith("| toy_sd3")]
    assert len(flow) == 6 and all("/" in row.split("|")[5] for row in flow)
