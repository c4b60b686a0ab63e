"""docs/api.md's end-to-end example runs as written (images -> descriptors -> whitening -> search -> metrics)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_the_api_doc_has_one_example_and_it_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(API_DOC.read_text(encoding="utf-8"))
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(blocks[0], str(API_DOC), "exec"), {"__name__": "api_example"})
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert out.startswith("query\trank\tscore\tpath\n")
    assert "folder collection photos: 12 images, 3 classes, 8-D; 12 queries" in out
    document = json.loads((tmp_path / "rankings.json").read_text())
    assert document["format"] == "rkit-rankings" and len(document["settings"]["all"]["queries"]) == 12
