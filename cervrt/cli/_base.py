"""What every command module shares: the error-handling, lazily loading group and helpers.

``CervrtGroup`` turns a CervrtError into one line ``error: ...`` (exit code 1) and Ctrl-C into
``interrupted`` (exit code 130), never a traceback. It imports a command's module only when that
command runs or the help lists it, so ``cervrt infer`` never imports torch; a command whose extra
is not installed is listed as such. ``default(Config, "field")`` reads a default from the library's
dataclass, ``values(Enum)`` an enum's choices: the CLI holds no second copy of either.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import json
from collections.abc import Iterable
from typing import Any

import click

from cervrt.errors import CervrtError, MissingDependencyError

__all__ = ["CONTEXT", "CervrtGroup", "backend_options", "default", "dump", "explicit", "values"]

#: click settings of every group: -h as well as --help, and 100 columns.
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class CervrtGroup(click.Group):
    """A click group: CervrtError and Ctrl-C become one line and an exit code; ``lazy`` commands load on use.

    ``lazy`` maps a command name to ``("module:attribute", extra)``: the module is imported when the
    command is needed, and a missing dependency names ``pip install "cervrt[extra]"`` (extra ``""``:
    a core dependency, the import error stands).
    """

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self._lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self._lazy and name not in self.commands:
            target, extra = self._lazy[name]
            module, _, attribute = target.partition(":")
            try:
                command = getattr(importlib.import_module(module), attribute)
            except ModuleNotFoundError as exc:
                missing = exc.name or "cervrt"
                if not extra or missing == "cervrt" or missing.startswith("cervrt."):
                    raise  # a core dependency, or cervrt itself: not an extra's
                raise MissingDependencyError(exc.name or "a dependency", extra) from None
            self.add_command(command, name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows, names = [], self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names), default=0)
        for name in names:
            try:
                command = self.get_command(ctx, name)
            except MissingDependencyError as exc:
                rows.append((name, f"(needs cervrt[{exc.extra}]: {exc.module} is not installed)"))
                continue
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CervrtError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("\ninterrupted: nothing half-written was left behind", err=True)
            ctx.exit(130)


def dump(obj: Any) -> str:
    """Strict JSON (NaN as null), indented, for ``--json`` and summaries."""
    from cervrt._io import nan_to_none

    return json.dumps(nan_to_none(obj), indent=2, allow_nan=False)


def explicit(ctx: click.Context, names: Iterable[str]) -> dict[str, Any]:
    """The options the user typed (not defaults), for overriding a resumed run's config."""
    source = click.core.ParameterSource
    return {n: ctx.params[n] for n in names if ctx.get_parameter_source(n) == source.COMMANDLINE}


def default(config: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``config`` (an enum default as its value)."""
    field = next((f for f in dataclasses.fields(config) if f.name == name), None)
    if field is None or (field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING):
        raise LookupError(f"{config.__name__}.{name} has no default")
    value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return value.value if isinstance(value, enum.Enum) else value


def values(choices: type[enum.Enum] | Iterable[Any]) -> list[str]:
    """An enum's values (or any names) as click choices."""
    members = list(choices)
    return [m.value if isinstance(m, enum.Enum) else str(m) for m in members]


def backend_options(command: Any) -> Any:
    """``--backend`` and ``--bf16``, as every command that loads a model for inference takes them (defaults
    from ``PredictorConfig``)."""
    from cervrt.runtime.config import PredictorConfig

    command = click.option("--bf16", is_flag=True,
                           help="With --backend openvino: BF16 inference precision (AVX-512 BF16 or AMX).")(command)
    return click.option("--backend", default=default(PredictorConfig, "backend"), show_default=True,
                        help="Which backend runs an .onnx model: auto (ONNX Runtime), onnxruntime or openvino "
                             "(CPU).")(command)
