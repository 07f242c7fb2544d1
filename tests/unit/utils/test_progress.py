import io

from tqdm import tqdm

from openpoints_dd.utils.progress import bar_disabled


def test_a_bar_is_drawn_only_when_asked_for_and_on_a_terminal():
    off, on_file = io.StringIO(), io.StringIO()
    for _ in tqdm(range(3), file=off, disable=bar_disabled(False)):
        pass
    for _ in tqdm(range(3), file=on_file, disable=bar_disabled(True)):   # a file is no terminal
        pass
    assert off.getvalue() == '' and on_file.getvalue() == ''

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    terminal = Terminal()
    for _ in tqdm(range(3), file=terminal, disable=bar_disabled(True)):
        pass
    assert '3/3' in terminal.getvalue()
