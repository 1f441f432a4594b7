"""The training benchmarks run end to end (tiny settings) and print their figures."""

from __future__ import annotations

import re

from clp_tune.bench.benchmarks import _TimedStatistics
from clp_tune.cli import main


def test_statistics_overhead_bench_times_the_statistics(capsys) -> None:
    assert main(["bench", "statistics-overhead", "--epochs", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    inside = re.search(r"time inside the statistics: ([\d.]+)%", out)
    assert inside and float(inside.group(1)) > 0  # the timed subclass really ran inside the trainable
    assert _TimedStatistics.seconds > 0
    assert re.search(r"median epoch [\d.]+ ms without, [\d.]+ ms with all statistics", out)


def test_reference_bench_reports_test_accuracy(capsys) -> None:
    code = main(["bench", "mnist1d-reference", "--epochs", "1", "--seeds", "1"])
    out = capsys.readouterr().out
    accuracy = float(re.search(r"mean test accuracy ([\d.]+)", out).group(1))
    assert 0 < accuracy <= 1 and code == (0 if accuracy >= 0.92 else 1)  # one epoch: far below the target
