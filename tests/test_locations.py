"""Where the default database lives: never relative to the working directory."""

from __future__ import annotations

from pathlib import Path

from flowsvc.locations import data_dir, default_database_url


def test_flowsvc_data_dir_comes_first() -> None:
    env = {"FLOWSVC_DATA_DIR": "/srv/flows", "XDG_DATA_HOME": "/xdg", "HOME": "/home/u"}
    assert data_dir(env) == Path("/srv/flows")


def test_xdg_data_home_comes_next() -> None:
    assert data_dir({"XDG_DATA_HOME": "/xdg", "HOME": "/home/u"}) == Path("/xdg/flowsvc")


def test_otherwise_the_users_local_share() -> None:
    assert data_dir({"HOME": "/home/u"}) == Path("/home/u/.local/share/flowsvc")


def test_empty_variables_count_as_unset() -> None:
    env = {"FLOWSVC_DATA_DIR": "", "XDG_DATA_HOME": "", "HOME": "/home/u"}
    assert data_dir(env) == Path("/home/u/.local/share/flowsvc")


def test_a_relative_data_dir_is_made_absolute_once() -> None:
    assert data_dir({"FLOWSVC_DATA_DIR": "rel"}).is_absolute()


def test_the_default_database_is_sqlite_in_the_data_dir() -> None:
    url = default_database_url({"HOME": "/home/u"})
    assert url == "sqlite+aiosqlite:////home/u/.local/share/flowsvc/flowsvc.db"
