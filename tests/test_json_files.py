import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from qamdt.errors import ConfigError
from qamdt.json_files import atomic_path, plain_json, read_json_object, write_json


def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    with atomic_path(target) as temporary:
        assert temporary.parent == target.parent and temporary.exists()
        temporary.write_text("one")
    assert target.read_text() == "one"
    os.chmod(target, 0o640)
    with pytest.raises(RuntimeError), atomic_path(target, durable=True) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "one"
    with atomic_path(target, durable=True) as temporary:
        temporary.write_text("two")
    assert target.read_text() == "two" and (target.stat().st_mode & 0o777) == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_plain_json_and_write_json(tmp_path):
    values = {
        1: (np.float32(0.5), np.int64(3), np.bool_(True)),
        "nan": math.nan,
        "inf": -math.inf,
        "array": np.arange(4).reshape(2, 2),
        "tensor": torch.tensor(2.5),
        "path": Path("x") / "y",
    }
    plain = plain_json(values)
    assert plain == {
        "1": [0.5, 3, True],
        "nan": None,
        "inf": None,
        "array": [[0, 1], [2, 3]],
        "tensor": 2.5,
        "path": str(Path("x") / "y"),
    }
    write_json(tmp_path / "v.json", values)
    assert json.loads((tmp_path / "v.json").read_text()) == plain
    assert read_json_object(tmp_path / "v.json") == plain
    assert read_json_object(tmp_path / "missing.json") == {}
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ConfigError, match="list.json: expected a JSON object"):
        read_json_object(tmp_path / "list.json")
