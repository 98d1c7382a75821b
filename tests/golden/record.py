"""Re-record the golden files (on purpose only: see tests/golden/cases.py).

    python -m tests.golden.record            # tests/data/golden_tiny.json
    python -m tests.golden.record smollm2    # tests/data/golden_smollm2.json (loads SmolLM2)
"""

import json
import sys
import tempfile
from pathlib import Path

from tests.golden.cases import record_all, record_smollm2

DATA = Path(__file__).parents[1] / "data"

if __name__ == "__main__":
    if sys.argv[1:] == ["smollm2"]:
        from l2lang.backends.hf.models import load_model

        loaded = load_model("smollm2-135m")
        records, out = record_smollm2(loaded.model, loaded.tokenizer), DATA / "golden_smollm2.json"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            records, out = record_all(Path(tmp)), DATA / "golden_tiny.json"
    out.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    for key, value in records.items():
        print(f"{key}: {value['interventions']}")
