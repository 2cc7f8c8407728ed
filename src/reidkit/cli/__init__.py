"""The ``reidkit`` command line. ``main(argv)`` runs in-process (tests call it directly).

Subcommands: ``train``, ``splits``, ``eval``, ``extract``, ``search``, ``actmap``, ``export``,
``index`` (``build``, ``add``, ``remove``, ``info``), ``models``, ``datasets``, ``demo``.

Every failure the user can cause ends in one line on stderr, ``reidkit <command>: error:
<what and which file, key or flag>``, and exit code 2; Ctrl-C ends with ``interrupted`` and
exit code 130; an unexpected internal error prints its type and message in one line, exit code
1 (``REIDKIT_DEBUG=1`` shows the traceback). Warnings print as one line each.
"""

from __future__ import annotations

import os
import sys
import warnings

from . import evaluate, export, index, report, search, serve, splits, train
from ._common import Parser, UsageError

_SUBCOMMANDS = (train, splits, evaluate, search, export, index, serve, report)


def cmd_models(args) -> int:
    from ..models import list_models

    print("\n".join(list_models(args.pattern)))
    return 0


def cmd_datasets(args) -> int:
    from ..data import list_datasets

    print("\n".join(list_datasets(args.pattern)))
    return 0


def build_parser() -> Parser:
    parser = Parser(prog="reidkit", description="Person re-identification toolkit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in _SUBCOMMANDS:
        module.add_parsers(sub)
    p = sub.add_parser("models", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("datasets", help="list registered datasets")
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(func=cmd_datasets)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that describe bad input (their message names the culprit)."""
    from ..data import DatasetError, ImageReadError
    from ..engine.checkpoint import CheckpointError
    from ..engine.config import ConfigError
    from ..fileio import OutputError
    from ..index.errors import GalleryIndexError

    return (UsageError, GalleryIndexError, ConfigError, DatasetError, ImageReadError, CheckpointError, OutputError,
            FileNotFoundError, FileExistsError, PermissionError, KeyError, ValueError, OSError, RuntimeError)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (a ``KeyError``'s without the repr quotes)."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    text = "; ".join(line.strip() for line in str(text).splitlines() if line.strip())
    return text[:2000] or type(err).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"reidkit: warning: {one_line(Warning(str(message)))}", file=sys.stderr)


INFERENCE_COMMANDS = ("eval", "extract", "search", "index", "serve", "actmap", "export")
"""Commands that run models without a training config: they keep freed memory for reuse
(:func:`reidkit.engine.speed.reuse_freed_memory`) unless ``REIDKIT_MALLOC=default``; ``train``
and ``splits`` follow ``train.reuse_memory``."""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
    except SystemExit as stop:  # --help (0) or a one-line usage error (2)
        return int(stop.code or 0)
    except KeyboardInterrupt:
        print("reidkit: interrupted", file=sys.stderr)
        return 130
    debug = os.environ.get("REIDKIT_DEBUG") == "1"
    previous, warnings.showwarning = warnings.showwarning, _show_warning if not debug else warnings.showwarning
    if args.command in INFERENCE_COMMANDS and os.environ.get("REIDKIT_MALLOC") != "default":
        from ..engine.speed import reuse_freed_memory

        reuse_freed_memory()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"reidkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (reidkit index info | head): nothing to say
        return 0
    except _user_errors() as err:
        if debug:
            raise
        print(f"reidkit {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug: still one line, the traceback on request
        if debug:
            raise
        print(
            f"reidkit {args.command}: error: unexpected {type(err).__name__}: {one_line(err)} "
            "(set REIDKIT_DEBUG=1 to see the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    sys.exit(main())
