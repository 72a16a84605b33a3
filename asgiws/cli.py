"""The `asgiws` command. Its options are generated from Config's fields.

Every option also reads ASGIWS_<NAME> from the environment (`ASGIWS_PORT=9000`).
Options left at their default are not passed on, so Config's default applies.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import Any

import click
from click.core import ParameterSource

from asgiws import __version__
from asgiws.config import Config, ConfigError, field_types
from asgiws.importer import ImportFromStringError, check_importable
from asgiws.logging import configure_logging
from asgiws.main import run_config

ENV_PREFIX = "ASGIWS"
_FIELDS = {field.name: field for field in dataclasses.fields(Config)}


class Nullable(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2
    """A number that may also be "none" (Config's None: never, no bound), as the help says."""

    def __init__(self, inner: click.ParamType[Any]) -> None:
        self.inner = inner
        self.name = f"{inner.name}|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
            return None
        return self.inner.convert(value, param, ctx)


_CLICK_TYPES: dict[type, click.ParamType[Any]] = {int: click.INT, float: click.FLOAT, bool: click.BOOL}


def _click_type(field: dataclasses.Field[Any]) -> click.ParamType[Any]:
    base, choices, nullable = field_types()[field.name]
    kind: click.ParamType[Any] = click.Choice(choices) if choices else _CLICK_TYPES.get(base, click.STRING)
    return Nullable(kind) if nullable and kind is not click.STRING else kind


def flag_for(name: str) -> str:
    """The command-line flag of Config field `name` (`--ws-max-size`, `--header`)."""
    field = _FIELDS[name]
    return str(field.metadata.get("flag") or "--" + name.replace("_", "-"))


def _option_for(field: dataclasses.Field[Any]) -> click.Option:
    meta = field.metadata
    flag = flag_for(field.name)
    envvar = f"{ENV_PREFIX}_{field.name.upper()}"
    default = field.default if field.default is not dataclasses.MISSING else None
    common: dict[str, Any] = {"help": meta.get("help"), "envvar": envvar, "show_envvar": False}
    if meta.get("boolean_value"):
        # uvicorn's form `--ws-per-message-deflate BOOLEAN`; bare, and the --no- flag, still work
        # (_BareBooleanCommand supplies "true" when no value follows).
        return click.Option([flag, field.name], type=click.BOOL, default=default, show_default=True, **common)
    if meta.get("boolean"):
        negative = "--no-" + flag[2:]
        return click.Option(
            [f"{flag}/{negative}", field.name], default=default, show_default=default is not None, **common
        )
    if meta.get("multiple"):
        return click.Option([flag, field.name], multiple=True, default=default, show_default=bool(default),
                            type=str, **common)
    return click.Option(
        [flag, field.name], type=_click_type(field), default=default,
        show_default=default is not None, **common,
    )


def _negative_value_flags() -> dict[str, tuple[str, str]]:
    """`--no-X` of each value-form boolean: the option it sets, and to what."""
    return {
        "--no-" + flag_for(f.name)[2:]: (flag_for(f.name), "false")
        for f in _FIELDS.values() if f.metadata.get("boolean_value")
    }


_BOOLEAN_WORDS = {"1", "0", "true", "false", "t", "f", "yes", "no", "y", "n", "on", "off"}


def _spell_out_booleans(args: list[str]) -> list[str]:
    """Give value-form booleans a value when the user wrote them bare (`--ws-per-message-deflate APP`)."""
    value_flags = {flag_for(f.name) for f in _FIELDS.values() if f.metadata.get("boolean_value")}
    negatives = _negative_value_flags()
    out: list[str] = []
    for index, arg in enumerate(args):
        if arg in negatives:
            out.extend(negatives[arg])
            continue
        out.append(arg)
        following = args[index + 1] if index + 1 < len(args) else None
        if arg in value_flags and (following is None or following.lower() not in _BOOLEAN_WORDS):
            out.append("true")
    return out


class _Command(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _spell_out_booleans(list(args)))


def _load_env_file(path: str) -> None:
    """Set KEY=VALUE lines from `path` in os.environ (comments, `export` and quotes allowed)."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint="--env-file") from None
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].strip()
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        os.environ[key] = value


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


def _command(app: str, **values: Any) -> None:
    ctx = click.get_current_context()
    given = {
        name: value
        for name, value in values.items()
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    }
    if given.get("env_file"):
        _load_env_file(given["env_file"])
    try:
        config = Config(app=app, **given)
    except ConfigError as exc:
        raise click.UsageError(f"{flag_for(exc.name)} {exc.rule}") from None
    except ValueError as exc:  # already worded with the flag (--forwarded-allow-ips: ...)
        raise click.UsageError(str(exc)) from None
    # --app-dir goes on sys.path first: a --log-config may name the app's own
    # formatter or handler classes ("()": "mylog.JsonFormatter"), as with uvicorn.
    app_dir = os.path.abspath(config.app_dir)
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        configure_logging(config.log_config, config.log_level, config.access_log, config.use_colors)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--log-config") from None
    try:
        # Workers are forked (one by default): a module imported here would be
        # inherited, and SIGHUP or --reload would keep serving the old code. Only
        # look it up; the worker imports it, and the supervisor reports its errors.
        check_importable(app)
    except ImportFromStringError as exc:
        # Said as the worker says an attribute it cannot find: one ERROR line in the log's format.
        logging.getLogger("asgiws.error").error("%s", exc)
        sys.exit(1)
    sys.exit(run_config(config))


def build_command() -> click.Command:
    params: list[click.Parameter] = [click.Argument(["app"], envvar=f"{ENV_PREFIX}_APP")]
    params += [_option_for(f) for f in dataclasses.fields(Config) if f.metadata.get("cli", True)]
    command = _Command(
        "asgiws", callback=_command, params=params,
        help="Serve the ASGI application APP, given as MODULE:ATTRIBUTE.",
        context_settings={"auto_envvar_prefix": ENV_PREFIX, "show_default": True},
    )
    return click.version_option(__version__, "--version", prog_name="asgiws")(command)


main = build_command()
