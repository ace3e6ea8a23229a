"""Parity results as a terminal table, JSON, and JUnit XML (one test case per artifact, input set and output)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from attnopt.parity.check import CheckResult
from attnopt.parity.metrics import shown


def print_table(result: CheckResult) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("artifact", "prec", "inputs", "output", "max abs", "mean abs", "cosine", "top-1", "result", box=None)
    for case in result.cases:
        m = case.metrics
        verdict = "[green]pass[/]" if m.passed else f"[red]FAIL[/] {escape(m.reason)}"
        table.add_row(Path(case.artifact).name, case.precision, case.inputs, m.name, shown(m.max_abs, ".2e"),
                      shown(m.mean_abs, ".2e"), shown(m.cosine, ".6f"), "" if m.top1 is None else f"{m.top1:.2%}",
                      verdict)
    console = Console(stderr=True)
    console.print(table)
    for artifact, found in result.bisect.items():
        console.print(f"[yellow]bisect[/] {escape(Path(artifact).name)}: {escape(found['message'])}")


def write_json(result: CheckResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True, default=float) + "\n")


def write_junit(result: CheckResult, path: Path) -> None:
    suites = ET.Element("testsuites", name=f"attnopt check {result.model}")
    by_artifact: dict[str, list] = {}
    for case in result.cases:
        by_artifact.setdefault(case.artifact, []).append(case)
    for artifact, cases in by_artifact.items():
        failures = sum(not c.metrics.passed for c in cases)
        suite = ET.SubElement(suites, "testsuite", name=Path(artifact).name, tests=str(len(cases)),
                              failures=str(failures), errors="0")
        for case in cases:
            m = case.metrics
            element = ET.SubElement(suite, "testcase", classname=f"{Path(artifact).name}.{case.precision}",
                                    name=f"{case.inputs}/{m.name}")
            element.set("time", "0")
            ET.SubElement(element, "system-out").text = (
                f"max_abs={shown(m.max_abs, '.3g')} mean_abs={shown(m.mean_abs, '.3g')} "
                f"cosine={shown(m.cosine, '.6f')} criteria={case.criteria}")
            if not m.passed:
                ET.SubElement(element, "failure", message=m.reason, type="parity").text = (
                    f"{m.name} at inputs {case.inputs}: {m.reason}")
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
