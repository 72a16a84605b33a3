"""The `asgiws` command. Its options are generated from Config's fields.

Every option also reads ASGIWS_<NAME> from the environment (`ASGIWS_PORT=9000`).
Options left at their default are not passed on, so Config's default applies.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import click
from click.core import ParameterSource

from asgiws import __version__
from asgiws.config import Config
from asgiws.importer import ImportFromStringError, check_importable, import_from_string
from asgiws.logging import configure_logging
from asgiws.main import run_config

ENV_PREFIX = "ASGIWS"


def _click_type(field: dataclasses.Field[Any]) -> Any:
    choices = field.metadata.get("choices")
    if choices:
        return click.Choice(choices)
    annotation = str(field.type)
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return float
    return str


def _option_for(field: dataclasses.Field[Any]) -> click.Option:
    meta = field.metadata
    flag = meta.get("flag") or "--" + field.name.replace("_", "-")
    envvar = f"{ENV_PREFIX}_{field.name.upper()}"
    default = field.default if field.default is not dataclasses.MISSING else None
    common: dict[str, Any] = {"help": meta.get("help"), "envvar": envvar, "show_envvar": False}
    if meta.get("boolean"):
        negative = "--no-" + flag[2:]
        return click.Option([f"{flag}/{negative}", field.name], default=default, show_default=True, **common)
    if meta.get("multiple"):
        return click.Option([flag, field.name], multiple=True, default=default, show_default=bool(default),
                            type=str, **common)
    return click.Option(
        [flag, field.name], type=_click_type(field), default=default,
        show_default=default is not None, **common,
    )


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
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        configure_logging(config.log_config, config.log_level, config.access_log)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--log-config") from None
    app_dir = os.path.abspath(config.app_dir)
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        if config.reload or config.workers > 1:
            # Workers are forked: a module imported here would be inherited,
            # and --reload would keep serving the old code. Only look it up.
            check_importable(app)
        else:
            import_from_string(app)
    except ImportFromStringError as exc:
        _fail(str(exc))
    sys.exit(run_config(config))


def build_command() -> click.Command:
    params: list[click.Parameter] = [click.Argument(["app"], envvar=f"{ENV_PREFIX}_APP")]
    params += [_option_for(f) for f in dataclasses.fields(Config) if f.metadata.get("cli", True)]
    command = click.Command(
        "asgiws", callback=_command, params=params,
        help="Serve the ASGI application APP, given as MODULE:ATTRIBUTE.",
        context_settings={"auto_envvar_prefix": ENV_PREFIX, "show_default": True},
    )
    return click.version_option(__version__, "--version", prog_name="asgiws")(command)


main = build_command()
