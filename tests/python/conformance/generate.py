"""Generates docs/CONFORMANCE.md: every normative statement of MQTT 3.1.1 and 5.0 -> the tests
that cover it, or why it does not apply.

Sources, so the table cannot drift from the tests by hand-editing:
  * statements-3.1.1.tsv / statements-5.0.tsv here: every [MQTT-x.y.z-n] id of each spec,
    who it binds (S server, B both, C client, NA not applicable + why) and a paraphrase;
  * the Python tests: ``[v3 MQTT-...]`` / ``[v5 MQTT-...]`` in test docstrings;
  * the Rust tests (tests/tests/*.rs): ``/// v3.1.1: [MQTT-...]`` and ``/// v5: [MQTT-...]``
    doc-comment lines above each ``#[test] fn``;
  * findings.md here: known deviations of iothub, copied into the document.

Run from anywhere:  python tests/python/conformance/generate.py   (writes docs/CONFORMANCE.md)
                    python tests/python/conformance/generate.py --check   (exit 1 if out of date)
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
PY_TESTS = REPO / "tests" / "python"
RUST_TESTS = REPO / "tests" / "tests"
OUTPUT = REPO / "docs" / "CONFORMANCE.md"
VERSIONS = {"v3": ("MQTT 3.1.1", HERE / "statements-3.1.1.tsv"), "v5": ("MQTT 5.0", HERE / "statements-5.0.tsv")}

PY_ID = re.compile(r"\[(v3|v5) (MQTT-\d+\.\d+\.\d+-\d+)\]")
RUST_TOKEN = re.compile(
    r"(?P<marker>\bv?3\.1\.1\b|\bv4\b|\bv5\b|\bMQTT ?5\b)|\[(?P<ident>MQTT-\d+\.\d+\.\d+-\d+)\]"
)
RUST_FN = re.compile(r"^\s*(?:pub\s+)?(?:async\s+)?fn\s+(\w+)")


@dataclass
class Statement:
    ident: str
    who: str
    text: str
    note: str


def load_statements(path: Path) -> list[Statement]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        if len(cells) < 3 or cells[1] not in ("S", "B", "C", "NA"):
            raise ValueError(f"{path.name}: bad row {line!r}")
        out.append(Statement(cells[0], cells[1], cells[2], cells[3] if len(cells) > 3 else ""))
    return out


def python_coverage() -> dict[tuple[str, str], list[str]]:
    """(version, id) -> ["tests/python/file.py::test_name", ...] from test docstrings."""
    cover: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(PY_TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                doc = ast.get_docstring(node) or ""
                ref = f"tests/python/{path.name}::{node.name}"
                for version, ident in PY_ID.findall(doc):
                    if ref not in cover[(version, ident)]:
                        cover[(version, ident)].append(ref)
    return cover


def rust_coverage() -> tuple[dict[tuple[str, str], list[str]], list[str]]:
    """(version, id) -> ["tests/tests/file.rs::test_name"], plus ids cited without a version."""
    cover: dict[tuple[str, str], list[str]] = defaultdict(list)
    unattributed: list[str] = []
    for path in sorted(RUST_TESTS.glob("*.rs")) if RUST_TESTS.is_dir() else []:
        doc: list[str] = []
        is_test = False
        for line in path.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith("///"):
                doc.append(stripped[3:].strip())
                continue
            if stripped.startswith("#["):
                is_test = is_test or stripped.startswith(("#[test]", "#[tokio::test"))
                continue
            match = RUST_FN.match(line)
            if match and is_test:
                ref = f"tests/tests/{path.name}::{match.group(1)}"
                # Each id takes the protocol version named most recently before it in the doc
                # comment ("v3.1.1: [...]", "v5 [...]", "an MQTT 5 client ... [...]").
                version: str | None = None
                for token in RUST_TOKEN.finditer(" ".join(doc)):
                    marker, ident = token.group("marker"), token.group("ident")
                    if marker:
                        version = "v5" if "5" in marker.replace("3.1.1", "") else "v3"
                    elif version is None:
                        unattributed.append(f"{ref}: [{ident}]")
                    elif ref not in cover[(version, ident)]:
                        cover[(version, ident)].append(ref)
            if stripped and not stripped.startswith("//"):
                doc = []
                is_test = False
    return cover, unattributed


def section(ident: str) -> str:
    return ident.removeprefix("MQTT-").rsplit("-", 1)[0]


def render() -> str:
    py = python_coverage()
    rs, unattributed = rust_coverage()
    lines = [
        "# MQTT conformance of iothub",
        "",
        "Every normative statement (`[MQTT-x.y.z-n]`) of MQTT 3.1.1 and MQTT 5.0, and the end-to-end",
        "tests that check iothub against it, or why it does not apply. The two specs reuse numbers for",
        "different statements, so each version has its own table.",
        "",
        "**Generated** by `python tests/python/conformance/generate.py` from the statement lists in",
        "`tests/python/conformance/statements-*.tsv` (ids as numbered in the OASIS texts; MQTT 5.0 from",
        "its Appendix B; wording paraphrased), the `[v3 MQTT-…]`/`[v5 MQTT-…]` ids in the Python test",
        "docstrings and the `/// v3.1.1: […]` / `/// v5: […]` doc comments of the Rust tests. Do not",
        "edit by hand: change the tests or the lists, then regenerate.",
        "",
        "Legend: **S** binds the server; **B** binds client and server (the server side is tested);",
        "**NA** does not apply (reason given). Statements that bind only the client are listed per",
        "section at the end of each version. A listed test covers the statement; it may currently",
        "fail against iothub: see *Known deviations*. \"**not covered**\" means no test checks it yet.",
        "",
    ]
    summary = ["| Spec | Server statements (S+B) | Covered | Not covered | Not applicable | Client only |",
               "| --- | --- | --- | --- | --- | --- |"]
    body: list[str] = []
    for version, (title, path) in VERSIONS.items():
        statements = load_statements(path)
        server = [s for s in statements if s.who in ("S", "B")]
        covered = [s for s in server if py.get((version, s.ident)) or rs.get((version, s.ident))]
        na = [s for s in statements if s.who == "NA"]
        client = [s for s in statements if s.who == "C"]
        summary.append(
            f"| {title} | {len(server)} | {len(covered)} | {len(server) - len(covered)} | {len(na)} | {len(client)} |"
        )
        body += [f"## {title}", "", "| Statement | Binds | What it requires | Covered by |", "| --- | --- | --- | --- |"]
        for s in statements:
            if s.who == "C":
                continue
            tests = py.get((version, s.ident), []) + rs.get((version, s.ident), [])
            if s.who == "NA":
                cell = f"n/a: {s.note}"
            elif tests:
                cell = "<br>".join(f"`{t}`" for t in tests)
                if s.note:
                    cell += f"<br>({s.note})"
            else:
                cell = "**not covered**" + (f" ({s.note})" if s.note else "")
            body.append(f"| {s.ident} | {s.who} | {s.text} | {cell} |")
        body += ["", f"### {title}: statements that bind only the client", ""]
        by_section: dict[str, list[str]] = defaultdict(list)
        for s in client:
            by_section[section(s.ident)].append(s.ident)
        for sec, idents in by_section.items():
            body.append(f"- {sec}: {', '.join(idents)} — client obligations; the server does not act on them.")
        body.append("")
    lines += summary + [""] + body
    if unattributed:
        lines += ["## Ids cited by Rust tests without a protocol version", "",
                  "These doc comments name ids without saying 3.1.1 or 5, so they are not counted above:", ""]
        lines += [f"- {u}" for u in unattributed] + [""]
    findings = HERE / "findings.md"
    if findings.exists():
        lines += [findings.read_text(encoding="utf-8").rstrip(), ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run python {Path(__file__).relative_to(REPO)}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
