"""Shared by every test module."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings

# Hypothesis judges no test by time (a busy machine is slow, not wrong): no deadline per
# example, no "too slow" health check. A test's own @settings keeps these unless it names them.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread in the test process: the models under test are small, so more threads
    gain nothing, and with the (2) cores shared by the searches that tests start in
    subprocesses, OpenMP waits on descheduled threads and gets many times slower.
    Subprocesses choose their own threads (``--threads``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Files whose tests start Ray clusters: run them one after another on one pytest-xdist
# worker (two clusters at once on a 2-core machine starve each other's raylets).
_RAY_FILES = {"test_ray_search.py", "test_early_stopping_backends.py"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """With ``-n N --dist loadgroup`` (the default in pyproject.toml), every test file is one
    group, so module-scoped fixtures (the shared end-to-end searches) are built once, on one
    worker; the Ray files share a group, the longest, which goes first so that it does not
    finish alone at the end."""
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group("ray" if name in _RAY_FILES else name))
    items.sort(key=lambda item: item.path.name not in _RAY_FILES)  # stable: file order kept
