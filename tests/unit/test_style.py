"""House rules a linter does not check: a user-facing error message fits in two lines of source."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import ptbr.errors
from tests.helpers.train_harness import REPO

ERRORS = {
    name for name, obj in vars(ptbr.errors).items() if inspect.isclass(obj) and issubclass(obj, ptbr.errors.PtbrError)
}


def user_error_messages() -> list[tuple[str, int, int]]:
    """(file, line, source lines of the message) of every ``raise SomePtbrError(message)`` in ptbr/."""
    found = []
    for path in sorted((REPO / "ptbr").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        local = ERRORS | {
            n.name
            for n in ast.walk(tree)
            if isinstance(n, ast.ClassDef) and any(getattr(b, "id", "") in ERRORS for b in n.bases)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
                name = getattr(node.exc.func, "id", getattr(node.exc.func, "attr", ""))
                if name in local:
                    msg = node.exc.args[0]
                    found.append((str(path.relative_to(REPO)), node.lineno, msg.end_lineno - msg.lineno + 1))
    return found


def test_user_error_messages_fit_in_two_lines_of_source():
    messages = user_error_messages()
    assert len(messages) > 100  # the scan finds them
    long = [f"{f}:{line} ({n} lines)" for f, line, n in messages if n > 2]
    assert not long, "shorten these messages (one line for the user, at most two in the source): " + ", ".join(long)


def test_the_check_sees_a_long_message(tmp_path: Path):
    tree = ast.parse('raise DataError(f"a" f"b"\n "c"\n "d")')
    msg = tree.body[0].exc.args[0]
    assert msg.end_lineno - msg.lineno + 1 == 3
