from pathlib import Path

import pytest
import torch

from kiln.data import ArrayDataset, make_loader, read_csv
from kiln.errors import ConfigError, DataError

from .files import inputs

IRIS = """sepal_length,sepal_width,species
5.1,3.5,setosa
7.0,3.2,versicolor
6.3,3.3,virginica
4.9,3.0,setosa
6.4,3.2,versicolor
"""


def write(tmp_path: Path, text: str, name: str = "table.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


def test_header_and_string_labels_round_trip_through_the_loader(tmp_path: Path) -> None:
    dataset = read_csv(write(tmp_path, IRIS), label="species")
    assert isinstance(dataset, ArrayDataset)
    assert dataset.classes == ["setosa", "versicolor", "virginica"]
    assert inputs(dataset).dtype == torch.float32 and inputs(dataset).shape == (5, 2)
    assert dataset.y is not None and dataset.y.tolist() == [0, 1, 2, 0, 1]
    batches = list(make_loader(dataset, 2, shuffle=True, seed=0).epoch(0))
    assert [tuple(x.shape) for x, _ in batches] == [(2, 2), (2, 2), (1, 2)]
    by_first_feature = {round(float(x[0]), 1): int(y) for xs, ys in batches for x, y in zip(xs, ys, strict=True)}
    assert by_first_feature == {5.1: 0, 7.0: 1, 6.3: 2, 4.9: 0, 6.4: 1}


def test_headerless_file_with_integer_labels_in_the_last_column(tmp_path: Path) -> None:
    dataset = read_csv(write(tmp_path, "0.5,1,7\n1.5,2,3\n2.5,3,-1\n"))
    assert inputs(dataset).tolist() == [[0.5, 1.0], [1.5, 2.0], [2.5, 3.0]]
    assert dataset.y is not None and dataset.y.dtype == torch.int64 and dataset.y.tolist() == [7, 3, -1]
    assert dataset.classes is None


def test_float_labels_are_regression_targets(tmp_path: Path) -> None:
    dataset = read_csv(write(tmp_path, "target,a\n0.25,1\n1.5,2\n"), label=0)
    assert dataset.y is not None and dataset.y.dtype == torch.float32 and dataset.y.tolist() == [0.25, 1.5]


def test_features_by_name_and_index_and_a_semicolon_delimiter(tmp_path: Path) -> None:
    path = write(tmp_path, "a;b;c;label\n1;2;3;x\n4;5;6;y\n")
    by_name = read_csv(path, label="label", features=["c", "a"], delimiter=";")
    by_index = read_csv(path, label=-1, features=[2, 0], delimiter=";", header=True)
    assert inputs(by_name).tolist() == inputs(by_index).tolist() == [[3.0, 1.0], [6.0, 4.0]]


def test_label_none_reads_features_only_and_a_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    dataset = read_csv(write(tmp_path, "a,b\n1,2\n\n3,4\n", encoding="utf-8-sig"), label=None, features=["a", "b"])
    assert dataset.y is None and inputs(dataset).shape == (2, 2)


def test_non_numeric_feature_names_the_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, IRIS.replace("6.3,3.3", "6.3,n/a"))
    with pytest.raises(DataError) as error:
        read_csv(path, label="species")
    message = str(error.value)
    assert str(path) in message and "line 4" in message and "'sepal_width'" in message and "'n/a'" in message


def test_an_undetected_header_gets_a_hint(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"line 1, column 0: 'colour'.*pass header=True"):
        read_csv(write(tmp_path, "colour,label\nred,a\n"))


def test_ragged_row_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"line 3: expected 3 columns.*found 2"):
        read_csv(write(tmp_path, "a,b,y\n1,2,0\n3,1\n"))


def test_classes_pin_the_ids_of_another_split(tmp_path: Path) -> None:
    train = read_csv(write(tmp_path, IRIS, "train.csv"), label="species")
    val = read_csv(write(tmp_path, IRIS.splitlines()[0] + "\n1,2,virginica\n", "val.csv"), classes=train.classes)
    assert val.y is not None and val.y.tolist() == [2] and val.classes == train.classes
    with pytest.raises(DataError, match="'daisy' is not one of classes"):
        read_csv(write(tmp_path, "a,b,label\n1,2,daisy\n", "bad.csv"), classes=train.classes)


@pytest.mark.parametrize(
    ("text", "match"),
    [("", "empty"), ("a,b,label\n", "no data rows"), ("a,b\n1,\n", "line 2"), ("1,2,\n", "label is empty")],
)
def test_empty_and_missing_values_are_data_errors(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(DataError, match=match):
        read_csv(write(tmp_path, text))


def test_bad_column_arguments_say_what_is_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, IRIS)
    with pytest.raises(DataError, match="no column 'petal'"):
        read_csv(path, label="petal")
    with pytest.raises(ConfigError, match="out of range"):
        read_csv(path, label=3)
    with pytest.raises(ConfigError, match="header=False"):
        read_csv(path, label="species", header=False)
    with pytest.raises(ConfigError, match="also listed in features"):
        read_csv(path, label="species", features=["species"])
    with pytest.raises(DataError, match="no such file"):
        read_csv(tmp_path / "missing.csv")
