"""``benchmarks.thread_policy``'s command line: ``--only`` picks busy settings, and an unknown one is refused
before any process starts (the benchmark itself is minutes of wall time; it is run by hand, benchmarks/README.md)."""

from __future__ import annotations

import pytest

from benchmarks import thread_policy


def test_only_refuses_an_unknown_setting_before_running(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        thread_policy.main(["--only", "threads=1", "threads=7"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown setting(s) threads=7" in err and "threads=1" in err.split("choose from")[1]


def test_settings_always_offer_the_default_and_one_thread() -> None:
    chosen = thread_policy.settings(2)
    assert chosen["default"] == ([], {})
    assert chosen["threads=1"][0] == ["--threads", "1"]
    assert chosen["threads=all"][0] == ["--threads", "2"]
