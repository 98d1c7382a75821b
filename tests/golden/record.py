"""Re-record tests/data/golden_tiny.json (on purpose only: see tests/golden/cases.py)."""

import json
import tempfile
from pathlib import Path

from tests.golden.cases import record_all

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        records = record_all(Path(tmp))
    out = Path(__file__).parents[1] / "data" / "golden_tiny.json"
    out.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    for key, value in records.items():
        print(f"{key}: {value['interventions']} passes={value['extra_layer_passes']}")
