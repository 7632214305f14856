from __future__ import annotations

import pytest

from shared.db import MigrationError, check_schema_name, load_migrations


def test_migrations_load_in_numeric_order(tmp_path):
    (tmp_path / "010_later.sql").write_text("SELECT 10;")
    (tmp_path / "002_second.sql").write_text("SELECT 2;")
    (tmp_path / "001_first.sql").write_text("SELECT 1;")
    (tmp_path / "notes.txt").write_text("ignored")
    assert [m.version for m in load_migrations(tmp_path)] == [1, 2, 10]


def test_duplicate_numbers_are_refused(tmp_path):
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "001_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="two migrations numbered 1"):
        load_migrations(tmp_path)


@pytest.mark.parametrize("name", ["Robert'); DROP", "a-b", "", "1abc"])
def test_schema_names_are_checked(name):
    with pytest.raises(ValueError):
        check_schema_name(name)
