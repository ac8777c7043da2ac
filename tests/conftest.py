"""
pytest glue: run every test in a scratch directory, as trial does, so that
TestCase.mktemp() and twistd's files never land in the checkout.
"""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _scratchDirectory(tmp_path_factory):
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("trial"))
    try:
        yield
    finally:
        os.chdir(previous)
