"""Progress bars go to a terminal only: piped logs hold no bar lines."""

import io

from siftbench.benchmark.core.executors import LocalExecutor
from siftbench.benchmark.core.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_is_drawn_on_a_terminal_only():
    terminal, pipe = Terminal(), io.StringIO()
    assert list(progress_bar(range(3), desc="work", file=terminal)) == [0, 1, 2]
    assert list(progress_bar(range(3), desc="work", file=pipe)) == [0, 1, 2]
    assert "work" in terminal.getvalue() and "3/3" in terminal.getvalue()
    assert pipe.getvalue() == ""


def test_enabled_false_hides_it_on_a_terminal_too():
    terminal = Terminal()
    list(progress_bar(range(3), enabled=False, file=terminal))
    assert terminal.getvalue() == ""


def test_a_stage_run_with_progress_writes_no_bar_into_a_pipe(capfd):
    assert LocalExecutor(workers=1, progress=True).map(abs, [-1, -2], desc="score") == [1, 2]
    assert capfd.readouterr().err == ""
