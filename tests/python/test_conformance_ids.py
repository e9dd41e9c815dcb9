"""The spec ids cited by the tests exist, so docs/CONFORMANCE.md never counts a typo as coverage."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "conformance"))
import generate  # noqa: E402


@pytest.mark.parametrize("version", sorted(generate.VERSIONS))
def test_every_cited_statement_exists_in_that_version(version):
    _, path = generate.VERSIONS[version]
    known = {s.ident for s in generate.load_statements(path)}
    cited = {ident for (v, ident) in generate.python_coverage() if v == version}
    assert cited, "no test cites this version"
    assert sorted(cited - known) == []


@pytest.mark.parametrize("version", sorted(generate.VERSIONS))
def test_statement_lists_have_unique_ids_and_reasons_for_not_applicable(version):
    _, path = generate.VERSIONS[version]
    statements = generate.load_statements(path)
    idents = [s.ident for s in statements]
    assert len(idents) == len(set(idents))
    assert [s.ident for s in statements if s.who == "NA" and not s.note] == []
