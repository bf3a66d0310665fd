"""examples/tabular.py: CSV -> standardised MLP -> registered with its preprocessing -> served and queried raw."""

from __future__ import annotations

import json
import re

from test_examples import accuracy, run_example


def test_tabular_trains_registers_with_preprocessing_and_serves(tmp_path):
    output = run_example("tabular.py", "--epochs", "25", cwd=tmp_path)
    assert accuracy(output) >= 0.93  # an untrained model, or one fed unstandardised features, is far below
    assert "read breast_cancer.csv: 569 rows, 30 features, classes ['benign', 'malignant']" in output
    served = re.search(
        r"served breast-cancer@1 \(onnx\): 114 raw test rows standardised by the client, accuracy "
        r"([0-9.]+), agreement with the in-process model ([0-9.]+)",
        output,
    )
    assert served, output
    assert float(served.group(1)) >= 0.93 and float(served.group(2)) == 1.0
    request = json.loads((tmp_path / "breast_cancer.json").read_text())
    assert len(request["inputs"]) == 1 and len(request["inputs"][0]) == 30
    assert abs(sum(request["inputs"][0]) / 30) < 3  # standardised values, not raw measurements (up to ~2500)
