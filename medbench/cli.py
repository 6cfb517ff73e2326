"""The ``medbench`` command line: one small module per subcommand in ``medbench.cli_commands``."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys

log = logging.getLogger("medbench")

SUBCOMMANDS = {
    "list": "medbench.cli_commands.list_cmd",
    "run": "medbench.cli_commands.run_cmd",
    "train": "medbench.cli_commands.train_cmd",
    "score": "medbench.cli_commands.score_cmd",
    "table": "medbench.cli_commands.table_cmd",
    "compare": "medbench.cli_commands.compare_cmd",
    "baselines": "medbench.cli_commands.baselines_cmd",
    "pretrain": "medbench.cli_commands.pretrain_cmd",
    "bench": "medbench.cli_commands.bench_cmd",
    "convert": "medbench.cli_commands.convert_cmd",
    "data": "medbench.cli_commands.data_cmd",
    "sweep": "medbench.cli_commands.sweep_cmd",
    "show": "medbench.cli_commands.show_cmd",
    "setup-clinical": "medbench.cli_commands.setup_clinical_cmd",
}

EPILOG = """examples:
  medbench list methods
  medbench run --method greedy --task phantom-vqa --limit 50
  medbench run --method lora --task phantom-vqa
  medbench run --method beam --tuning lora --task phantom-vqa
  medbench table --results results/runs
  medbench score results/runs/tiny-med-llava/phantom-vqa/none+greedy
  medbench baselines check
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medbench",
        description="Benchmark harness for medical vision-language models: hallucination-mitigation "
        "decoding methods and A3TUNE on medical VQA and report generation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    for module in method_commands().values():
        importlib.import_module(module).add_parser(sub)
    for name, (module, dist) in plugin_commands(set(sub.choices)).items():
        _add_plugin_command(sub, name, module, dist)
    return parser


def plugin_commands(taken: set[str]) -> dict[str, tuple[str, str]]:
    """Subcommands third-party packages provide through the ``medbench.commands`` entry points
    (``name = "module"``, the module defining ``add_parser(sub)``): name → (module, distribution).
    A name that is already a command is skipped with a warning."""
    from importlib.metadata import entry_points

    out: dict[str, tuple[str, str]] = {}
    for ep in entry_points(group="medbench.commands"):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "an unnamed distribution"
        module = ep.value.partition(":")[0].strip()
        if ep.name in taken or ep.name in out:
            log.warning("plugin command %r from %s ignored: medbench already has a command of that name",
                        ep.name, dist)
            continue
        out[ep.name] = (module, dist)
    return out


def _add_plugin_command(sub: argparse._SubParsersAction, name: str, module: str, dist: str) -> None:
    """Import a plugin's command module and let it add its parser; a plugin that fails to import or
    adds no parser named ``name`` is left out with a warning, so it cannot break the other commands."""
    try:
        importlib.import_module(module).add_parser(sub)
    except Exception as exc:  # a broken third-party package must not take the CLI down with it
        log.warning("plugin command %r from %s ignored: %s: %s", name, dist, type(exc).__name__, exc)
        return
    if name not in sub.choices:
        log.warning("plugin command %r from %s ignored: %s.add_parser added no command of that name",
                    name, dist, module)


def method_commands() -> dict[str, str]:
    """Subcommands the built-in methods provide (``commands`` on the class, e.g. A³TUNE's
    ``weak-labels``): name → module with ``add_parser``. Read from the registry; imports no method."""
    from medbench.registry import METHODS

    out: dict[str, str] = {}
    for name in METHODS.in_order():
        for command, module in METHODS.entry(name).info.get("commands", {}).items():
            if command in SUBCOMMANDS or command in out:
                raise ValueError(f"method {name} provides the subcommand {command!r}, which exists already")
            out[command] = module
    return out


def main(argv: list[str] | None = None) -> int:
    from medbench.console import progress_bars_disabled
    from medbench.registry import PluginError, UnknownNameError, load_plugins

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "transformers", "peft"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    load_plugins()  # third-party tasks, methods and models (entry points); imports nothing yet
    try:
        with progress_bars_disabled() if args.quiet else contextlib.nullcontext():
            return int(args.func(args) or 0)
    except (UnknownNameError, PluginError) as exc:
        print(f"medbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medbench: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user-facing errors carry their own clear message
        from medbench.errors import USER_ERRORS, exit_code, missing_extra

        extra = missing_extra(exc) if isinstance(exc, ImportError) else None
        if extra is not None:  # an optional extra (e.g. weak-labels) is not installed: a usage error
            print(f"medbench: error: {extra}", file=sys.stderr)
            return 2
        if isinstance(exc, USER_ERRORS):
            print(f"medbench: error: {exc}", file=sys.stderr)
            return exit_code(exc)
        raise


if __name__ == "__main__":
    sys.exit(main())
