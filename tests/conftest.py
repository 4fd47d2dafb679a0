"""Shared by every test module."""

from __future__ import annotations

import pytest
import torch


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
