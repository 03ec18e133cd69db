"""The command table: every `visinspect` command names a function that exists and takes
(settings, args), and the lazy loading keeps the client's commands free of the server's parts."""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys
from collections.abc import Iterator

from visinspect.cli import _load, _parser


def _leaves(
    parser: argparse.ArgumentParser, path: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield path.strip(), parser
        return
    for name, child in actions[0].choices.items():
        yield from _leaves(child, f"{path} {name}")


def test_every_command_resolves_to_a_function_of_settings_and_args() -> None:
    commands = dict(_leaves(_parser()))
    assert {"classify", "review", "quality", "drift", "serve", "model build", "db upgrade"} <= set(
        commands
    )
    for name, parser in commands.items():
        target = parser.get_default("command")
        assert target, f"{name} names no command"
        function = _load(target)
        parameters = list(inspect.signature(function).parameters)
        assert len(parameters) == 2, name  # (settings, args), as main() calls it
        assert parameters[0] == "settings", name
        if prelude := parser.get_default("prelude"):
            assert callable(_load(prelude))


def test_parsing_a_command_imports_none_of_them() -> None:
    """The parser alone loads no command module: `visinspect classify --url` stays light."""
    code = (
        "import sys; from visinspect.cli import _parser; "
        "_parser().parse_args(['classify', 'x.png', '--url', 'http://h']); "
        "print(sorted(m for m in sys.modules if m.startswith('visinspect.cli.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
