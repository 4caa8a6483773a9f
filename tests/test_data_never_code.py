"""Files from others (checkpoints, model folders, adapters, HDF5) are data, never code:
no call in the package may unpickle (``pickle``/``joblib``/``dill``/``cloudpickle`` loads,
``pandas.read_pickle``, ``numpy.load(allow_pickle=True)``) and every ``torch.load`` says
``weights_only=True``. Read from the source with ``ast``, so a new call site fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import cellbag

SRC = Path(cellbag.__file__).resolve().parent
UNPICKLERS = {"pickle", "joblib", "dill", "cloudpickle", "_pickle", "cPickle"}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return "?"


def _keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expr>"
    return None


def code_loading_calls(source: str) -> list[tuple[int, str]]:
    """(line, why) for each call in ``source`` that may execute code from a file."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in UNPICKLERS:
            if any(a.name in ("load", "loads", "Unpickler") for a in node.names):
                found.append((node.lineno, f"from {node.module} import load"))
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        head, _, tail = name.rpartition(".")
        if tail in ("load", "loads", "Unpickler") and head in UNPICKLERS:
            found.append((node.lineno, name))
        elif tail == "read_pickle":
            found.append((node.lineno, name))
        elif tail == "load" and head == "torch" and _keyword(node, "weights_only") is not True:
            found.append((node.lineno, "torch.load without weights_only=True"))
        elif tail == "load" and head in ("np", "numpy") and _keyword(node, "allow_pickle"):
            found.append((node.lineno, "numpy.load(allow_pickle=...)"))
    return found


def test_the_checker_sees_each_way_to_run_code():
    bad = (
        "import pickle, joblib, torch, numpy as np, pandas as pd\n"
        "pickle.load(f)\njoblib.load(p)\ntorch.load(p, weights_only=False)\ntorch.load(p)\n"
        "np.load(p, allow_pickle=True)\npd.read_pickle(p)\nfrom pickle import loads\n"
    )
    assert len(code_loading_calls(bad)) == 7
    good = "import torch, numpy as np\ntorch.load(p, weights_only=True)\nnp.load(p)\n"
    assert code_loading_calls(good) == []


def test_no_file_is_unpickled():
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        calls = code_loading_calls(text)
        if "weights_only=False" in text.replace(" ", ""):
            calls.append((0, "weights_only=False"))
        if calls:
            found[str(path.relative_to(SRC))] = calls
    assert not found, found
