"""`defed evaluate` end to end on a tiny run, the report files, the docs sync and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from defed_core.evaluation.findings import compare, findings
from defed_core.evaluation.report import TABLES_BEGIN, TABLES_END, sync_docs
from gateway.cli import main

REPO = Path(__file__).resolve().parents[2]


def evaluate(tiny_data: Path, models: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["evaluate", "--bundle", str(models["bundle"]), "--data", str(tiny_data), "--out", str(out),
                 "--basenet", str(models["basenet"]), "--magnet", str(models["magnet"]), "--attacks", "fgsm,deepfool",
                 "--per-cell", "3", "--max-attempts", "8", "--benign", "20", "--adaptive-count", "2",
                 "--adaptive-steps", "2", "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, tiny_models: dict[str, Path]) -> Path:
    out = tmp_path_factory.mktemp("report") / "r"
    assert evaluate(tiny_data, tiny_models, out) == 0
    return out


class TestReportFiles:
    def test_writes_tables_json_and_figures(self, report: Path) -> None:
        names = {p.name for p in report.iterdir()}
        assert {"results.md", "results.json", "detection-vs-eps.png", "adaptive.png", "hist-member-0.png",
                "hist-member-1.png"} <= names
        assert any(n.startswith("roc-") for n in names)

    def test_json_records_command_seed_versions_and_every_cell(self, report: Path) -> None:
        doc = json.loads((report / "results.json").read_text())
        assert doc["meta"]["command"].startswith("defed evaluate --bundle ")
        assert doc["plan"]["seed"] == 0 and doc["plan"]["budget"] == 0.05
        assert {"torch", "adversarial-robustness-toolbox", "python"} <= set(doc["meta"]["versions"])
        assert [c["label"] for c in doc["cells"]] == ["fgsm ε=0.1", "fgsm ε=0.2", "fgsm ε=0.3", "deepfool"]
        keys = {s["key"] for s in doc["screens"]}
        assert keys == {"defed", "defed-shipped", "defed-member-0", "defed-member-1", "basenet",
                        "feature-squeezing", "magnet", "none"}
        assert len(doc["adaptive"]) == 6 and doc["findings"]

    def test_thresholds_hold_the_budget_on_the_validation_split(self, report: Path) -> None:
        doc = json.loads((report / "results.json").read_text())
        assert doc["validation"]["images"] == 60 and "indices_sha256" in doc["validation"]
        for screen in doc["screens"]:
            if screen["key"] != "defed-shipped":
                assert screen["validation_fpr"] <= 0.05

    def test_markdown_has_the_command_and_the_generated_block(self, report: Path) -> None:
        text = (report / "results.md").read_text()
        assert "defed evaluate --bundle" in text and TABLES_BEGIN in text and TABLES_END in text
        assert "### Adaptive attack" in text and "### Findings" in text

    def test_docs_sync_copies_the_block(self, report: Path, tmp_path: Path) -> None:
        page = tmp_path / "page.md"
        page.write_text(f"# Intro\n\n{TABLES_BEGIN}\nPLACEHOLDER\n{TABLES_END}\n\nOutro\n")
        sync_docs(report / "results.md", page)
        text = page.read_text()
        assert "PLACEHOLDER" not in text and "### Detection rate" in text and text.endswith("Outro\n")


class TestErrors:
    def test_missing_basenet_is_one_line(self, tiny_data: Path, tiny_models: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
        models = {**tiny_models, "basenet": tmp_path / "nowhere"}
        assert evaluate(tiny_data, models, tmp_path / "r") == 2
        err = capsys.readouterr().err.strip()
        assert "BaseNet ensemble missing" in err and "defed train bundle --preset mnist-basenet" in err
        assert len(err.splitlines()) == 1

    def test_missing_magnet_names_the_flag(self, tiny_data: Path, tiny_models: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
        models = {**tiny_models, "magnet": tmp_path / "nowhere"}
        assert evaluate(tiny_data, models, tmp_path / "r") == 2
        assert "--train-magnet" in capsys.readouterr().err

    def test_unknown_attack(self, tiny_data: Path, tiny_models: dict[str, Path], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
        assert evaluate(tiny_data, tiny_models, tmp_path / "r", "--attacks", "fgsm,bogus") == 2
        assert "bogus" in capsys.readouterr().err


def cell(label: str, n: int, **rates: float) -> dict[str, Any]:
    return {"label": label, "adversarials": n,
            "results": {k: {"detection_rate": v, "auc": v} for k, v in rates.items()}}


class TestFindings:
    def test_ahead_behind_and_level_follow_the_numbers(self) -> None:
        cells = [cell("a", 300, defed=0.9, magnet=0.5), cell("b", 300, defed=0.4, magnet=0.8),
                 cell("c", 300, defed=0.91, magnet=0.90)]
        verdict = compare(cells, "defed", "magnet")
        assert [len(verdict[k]) for k in ("ahead", "behind", "level")] == [1, 1, 1]
        assert verdict["behind"][0].startswith("b ")

    def test_sentences_name_each_baseline(self) -> None:
        summary = {"plan": {"budget": 0.05}, "cells": [cell("a", 300, defed=0.9, magnet=0.5)],
                   "screens": [{"key": "defed", "title": "Defed ensemble"}, {"key": "magnet", "title": "MagNet"}]}
        text = " ".join(findings(summary))
        assert "Defed vs the MagNet-style detector" in text and "clearly ahead in 1 of 1" in text


class TestCommittedDocs:
    def test_docs_tables_match_the_committed_report(self) -> None:
        """docs/evaluation.md shows exactly the block of reports/mnist/results.md."""
        results, page = REPO / "reports" / "mnist" / "results.md", REPO / "docs" / "evaluation.md"
        if not results.is_file() or not page.is_file():
            pytest.skip("no committed MNIST report yet")
        block = results.read_text()
        block = block[block.index(TABLES_BEGIN) : block.index(TABLES_END)]
        assert block in page.read_text()
