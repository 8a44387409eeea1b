"""``countsdiff_sc.settings.num_threads``: torch's and the compiled kernels' threads, set and restored together."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

import countsdiff_sc as cds
from countsdiff_sc import _settings
from countsdiff_sc.cli import _parser, main
from countsdiff_sc.diffusion.counts import _kernels_cpu

BIG = 1 << 22  # entries enough for any thread count of a small machine


@pytest.fixture(autouse=True)
def keep_threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def test_setting_sets_torch_and_kernel_threads_and_restores():
    torch.set_num_threads(1)
    previous = cds.set_num_threads(2)
    assert previous == 1
    assert torch.get_num_threads() == 2 == cds.settings.num_threads == _kernels_cpu.launch_threads(BIG)
    cds.settings.num_threads = 1
    assert torch.get_num_threads() == 1 == _kernels_cpu.launch_threads(BIG)
    with cds.settings.threads(2) as n:
        assert n == 2 == torch.get_num_threads() == _kernels_cpu.launch_threads(BIG)
    assert torch.get_num_threads() == 1
    with pytest.raises(RuntimeError), cds.settings.threads(2):
        raise RuntimeError("restored on errors too")
    assert torch.get_num_threads() == 1
    cds.set_num_threads(previous)
    assert torch.get_num_threads() == 1


def test_kernel_launch_uses_the_setting(monkeypatch):
    started = []

    class Counting(threading.Thread):
        def start(self):
            started.append(self)
            super().start()

    monkeypatch.setattr(_kernels_cpu.threading, "Thread", Counting)
    count = torch.full((BIG,), 3.0)
    for n in (1, 2):
        started.clear()
        with cds.settings.threads(n):
            _kernels_cpu.binomial_cpu(count, torch.tensor(0.5), torch.Generator().manual_seed(0))
        assert len(started) == n - 1  # the calling thread is the first worker
    assert _kernels_cpu.launch_threads(10) == 1  # small tensors stay on one thread


@pytest.mark.parametrize("bad", [0, -2, 1.5, "two", True, float("nan"), [2]])
def test_bad_values_are_refused_with_a_message(bad):
    torch.set_num_threads(1)
    with pytest.raises(ValueError, match="num_threads must be a positive integer or 'auto'"):
        cds.set_num_threads(bad)
    with pytest.raises(ValueError, match="positive integer"):
        cds.settings.num_threads = bad
    assert torch.get_num_threads() == 1  # unchanged


def test_more_threads_than_cores_warns(monkeypatch):
    monkeypatch.setattr(_settings, "available_cores", lambda: 1)
    with pytest.warns(UserWarning, match="more than the 1 cores"):
        cds.set_num_threads(2)
    assert torch.get_num_threads() == 2


def test_auto_respects_scvi_then_omp_then_free_cores(monkeypatch):
    import scvi

    monkeypatch.setattr(_settings, "available_cores", lambda: 2)
    monkeypatch.setattr(_settings.os, "getloadavg", lambda: (1.1, 0.0, 0.0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(scvi.settings, "_num_threads", None)
    torch.set_num_threads(2)  # torch's default on 2 cores
    assert cds.settings.default_num_threads() == 1  # one core busy with another process: 1 thread
    monkeypatch.setattr(_settings.os, "getloadavg", lambda: (0.3, 0.0, 0.0))
    assert cds.settings.default_num_threads() == 2  # idle: torch's default
    monkeypatch.setattr(_settings.os, "getloadavg", lambda: (7.0, 0.0, 0.0))
    assert cds.settings.default_num_threads() == 1  # never below one
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cds.settings.default_num_threads() == 2  # the user's environment (torch read it)
    scvi.settings.num_threads = 1  # the user's scvi-tools setting wins (it also sets torch)
    torch.set_num_threads(2)
    assert cds.settings.default_num_threads() == 1
    cds.settings.num_threads = "auto"
    assert torch.get_num_threads() == 1
    with cds.settings.threads(None) as n:
        assert n == 1


def test_cli_threads_option_is_checked_and_restored(tmp_path, capsys):
    assert _parser().parse_args(["evaluate", "x.h5ad", "--threads", "auto"]).threads == "auto"
    assert _parser().parse_args(["demo", "--threads", "2"]).threads == 2
    for bad in ("0", "x"):
        with pytest.raises(SystemExit) as exc:
            _parser().parse_args(["evaluate", "x.h5ad", "--threads", bad])
        assert exc.value.code == 2
    assert "--threads" in capsys.readouterr().err
    torch.set_num_threads(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        code = main(["evaluate", str(tmp_path / "missing.h5ad"), "--threads", "1"])
    assert code == 1 and "input file not found" in capsys.readouterr().err
    assert torch.get_num_threads() == 2  # the in-process CLI restores the caller's threads
