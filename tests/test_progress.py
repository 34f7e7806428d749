"""Clean logs: a live bar only for a person at a terminal, one line per epoch elsewhere."""

from __future__ import annotations

import io

import pytest

from securemark_mpc.progress import PROGRESS_VARIABLE, final_states, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "shown"), [(io.StringIO(), False), (Terminal(), True)])
def test_the_bar_shows_only_on_a_terminal(monkeypatch, stream, shown):
    monkeypatch.delenv(PROGRESS_VARIABLE, raising=False)
    monkeypatch.setattr("sys.stderr", stream)
    bar = progress_bar(range(50), desc="epoch 1/1")
    assert list(bar) == list(range(50))
    bar.set_postfix(loss="0.1")
    bar.close()
    assert ("\r" in stream.getvalue()) is shown
    assert stream.getvalue() == "" or shown


def test_a_log_keeps_each_lines_final_state():
    pending = bytearray()
    kept = final_states(pending, b"\repoch 1: 10%\repoch 1: 50%")
    kept += final_states(pending, b"\r      \r" + b'{"epoch": 1}\nnext \r')
    kept += final_states(pending, b"done\n")
    assert kept == b'{"epoch": 1}\ndone\n'
    assert not pending
