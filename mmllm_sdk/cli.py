"""The ``mmllm`` command line: every command comes from a plugin's ``register_commands(cli)`` hook, the built-in ones
too (``mmllm_sdk/default_plugins/commands/``). Building the parser imports no model code: ``mmllm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from mmllm_sdk.errors import DuplicateComponentError, MMLLMError, PluginError
from mmllm_sdk.plugins import LOAD_ENV, call_register_hook, pm

PROG = "mmllm"
DESCRIPTION = "Build, inspect, chat with and export multimodal LLMs made of plugins."
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def main(argv: list[str] | None = None) -> int:
    """``mmllm ARGV``: parse and run the command. An SDK error prints its message (``Error: …``, status 2), any other
    exception one paragraph naming the plugin or module it came from (status 1); ``--debug`` shows the traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or bool(os.environ.get("MMLLM_DEBUG"))
    argv, command = [arg for arg in argv if arg != "--debug"], None
    try:
        parser, _, commands = _collect()
        args, extra = parser.parse_known_args(argv)
        command = getattr(args, "command", None)
        if extra and command:
            # argparse stops filling positionals at the first option (`chat CKPT --input x=y "question"`): the
            # command's own parser reads its arguments again, options and positionals in any order
            own, rest = commands.choices[command], argv[argv.index(command) + 1 :]
            try:
                args = own.parse_intermixed_args(rest, argparse.Namespace(command=command))
            except TypeError:  # a command with sub-commands of its own: argparse cannot intermix there
                own.error(f"unrecognized arguments: {' '.join(extra)}")
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if not command:
            parser.print_help()
            return 2
        return args.run(args) or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `mmllm plugins | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, MMLLMError):
            print(f"Error: {exc}", file=sys.stderr)
            return 2
        print(f"Error: {_unexpected(exc, command)}", file=sys.stderr)
        return 1


def _unexpected(exc: Exception, command: str | None) -> str:
    """One paragraph for an exception no check turned into an SDK error: where it was raised (the innermost frame of
    a plugin, else of any module), what it says, and how to see more."""
    owners = {getattr(plugin, "__name__", None): name for name, plugin in pm.list_name_plugin()}
    where, plugin, tb = "", "", exc.__traceback__
    while tb is not None:  # from the outermost frame in
        module = tb.tb_frame.f_globals.get("__name__", "?")
        where = f"{module}, line {tb.tb_lineno}"
        owner = next((name for prefix, name in owners.items() if prefix and f"{module}.".startswith(f"{prefix}.")), "")
        plugin = f"plugin {owner!r}" if owner else plugin
        tb = tb.tb_next
    where = f"{plugin} ({where})" if owner else f"{where}, called by {plugin}" if plugin else where
    return (
        f"`mmllm {command or ''}` stopped on an unexpected {type(exc).__name__} in {where}: {exc}. The SDK did not "
        "expect this input there: check the files and options you passed; if they look right, this is a bug of the "
        "code named. Run again with --debug to see the traceback, and report it with that."
    )


class CommandLine:
    """The ``cli`` a ``register_commands(cli)`` hook receives; one per plugin, so each command knows its plugin."""

    def __init__(self, commands: Any, owners: dict[str, str], plugin: str) -> None:
        self._commands = commands  # argparse's subparsers action of the `mmllm` parser
        self._owners = owners  # command name -> the plugin that registered it, shared by every plugin's cli
        self.plugin = plugin

    def command(
        self,
        name: str,
        run: Callable[[argparse.Namespace], int | None],
        *,
        help: str | None = None,
        description: str | Callable[[], str] | None = None,
    ) -> argparse.ArgumentParser:
        """Add ``mmllm NAME``; returns its ``argparse.ArgumentParser``, to which the plugin adds arguments.
        ``run(args)`` returns the exit status (``None`` is 0); an ``MMLLMError`` it raises is printed as ``Error: …``
        (status 2). ``help``: the line of ``mmllm --help``; ``description``: the paragraph of ``mmllm NAME --help``
        (a function returning it is called only when the help is shown)."""
        where = f"Plugin {self.plugin!r} called cli.command() in register_commands"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise PluginError(f"{where} with the name {name!r}; use lower case letters, digits, '-' and '_'.")
        if not callable(run):
            raise PluginError(f"{where} for {name!r} with a run that is not callable: {run!r}.")
        owner = self._owners.get(name)
        if owner is not None:
            raise DuplicateComponentError(
                f"The command {name!r} is registered by both plugin {owner!r} and plugin {self.plugin!r}. "
                f"Uninstall one of them, or load only one with {LOAD_ENV}."
            )
        self._owners[name] = self.plugin
        parser = self._commands.add_parser(name, help=help, description=description)
        parser.set_defaults(run=run)
        return parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose description may be a function, called when the help is shown (not on every run)."""

    def format_help(self) -> str:
        if callable(self.description):
            self.description = self.description()
        return super().format_help()


def _collect() -> tuple[argparse.ArgumentParser, dict[str, str], Any]:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (anywhere on the line)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    owners: dict[str, str] = {}
    call_register_hook("register_commands", lambda plugin: CommandLine(commands, owners, plugin))
    return parser, owners, commands


def build_parser() -> argparse.ArgumentParser:
    """The ``mmllm`` parser: one subcommand per command the loaded plugins register, in their order."""
    return _collect()[0]


def command_plugins() -> dict[str, str]:
    """Each command's name and the plugin that registers it, in the order ``mmllm --help`` lists them."""
    return _collect()[1]


if __name__ == "__main__":
    sys.exit(main())
