"""examples/tabular.py: CSV -> standardised MLP -> registered with its standardisation as declared preprocessing ->
served, queried with raw rows, answered with labels."""

from __future__ import annotations

import json
import re

from test_examples import accuracy, run_example


def test_tabular_trains_registers_with_preprocessing_and_serves(tmp_path):
    output = run_example("tabular.py", "--epochs", "25", cwd=tmp_path)
    assert accuracy(output) >= 0.93  # an untrained model, or one fed unstandardised features, is far below
    assert "read breast_cancer.csv: 569 rows, 30 features, classes ['benign', 'malignant']" in output
    served = re.search(
        r"served breast-cancer@1 \(onnx\): 114 raw test rows standardised by the server, accuracy "
        r"([0-9.]+), agreement with the in-process model ([0-9.]+)",
        output,
    )
    assert served, output
    assert float(served.group(1)) >= 0.93 and float(served.group(2)) == 1.0
    request = json.loads((tmp_path / "breast_cancer.json").read_text())
    assert len(request["inputs"]) == 1 and len(request["inputs"][0]) == 30
    assert max(request["inputs"][0]) > 100  # raw measurements (areas of hundreds), not standardised values
    assert re.search(r"labels of the first five test rows: \[('(benign|malignant)'(, )?){5}\]", output), output
