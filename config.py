"""One typed config per script: dataclass defaults, then a YAML file, then command-line flags.

Usage in a script:

    @dataclass
    class Config:
        lr: float = opt(3e-4, "peak learning rate")
        levels: list[int] = opt([8, 5, 5, 5], "FSQ levels")

    cfg = parse_config(Config, description=__doc__)

`--config configs/x.yaml` loads overrides; every field is also a `--name value` flag.
Unknown keys and values of the wrong type are errors that name the file or flag.
"""
import argparse
import dataclasses
import sys
import types
import typing

import yaml


def opt(default, help):
    """A dataclass field with help text. Lists and dicts are copied per instance."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


class ConfigError(ValueError):
    pass


def _unwrap_optional(tp):
    """Optional[X] -> (X, True); X -> (X, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def coerce(value, tp, where):
    """Check or convert `value` to type `tp`; strings (from the CLI) are parsed."""
    base, optional = _unwrap_optional(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ConfigError(f"{where}: None is not allowed (expected {getattr(base, '__name__', base)})")
    origin = typing.get_origin(base)
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(base) or (str,)
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        items = [coerce(v, item_tp, where) for v in value]
        return tuple(items) if origin is tuple else items
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if base is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if base is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported config type {base}")


def apply_overrides(cfg, overrides: dict, where: str):
    """Return a copy of `cfg` with `overrides` applied; unknown keys are errors."""
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
    changes = {k: coerce(v, hints[k], f"{where}: {k}") for k, v in overrides.items()}
    return dataclasses.replace(cfg, **changes)


def load_yaml(path):
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level")
    return data


def build_parser(cls, description=None):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML file of overrides (applied before the flags below)")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        bare = dict(nargs="?", const="true") if _unwrap_optional(hints[f.name])[0] is bool else {}  # `--resume`
        parser.add_argument(*names, dest=f.name, default=None, metavar="VALUE", **bare,
                            help=f"{f.metadata.get('help', '')} (default: {shown})".replace("%", "%%"))
    return parser


def parse_config(cls, argv=None, description=None):
    """Defaults < YAML (--config) < flags. Exits with a clear message on any error."""
    parser = build_parser(cls, description)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    cfg = cls()
    try:
        if args.config:
            cfg = apply_overrides(cfg, load_yaml(args.config), args.config)
        flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name) is not None}
        cfg = apply_overrides(cfg, flags, "command line")
    except ConfigError as e:
        parser.error(str(e))
    return cfg


def config_from_dict(cls, data: dict, where="checkpoint"):
    """Rebuild a config saved with `dataclasses.asdict` (e.g. from a checkpoint)."""
    return apply_overrides(cls(), data, where)


def format_config(cfg) -> str:
    width = max(len(f.name) for f in dataclasses.fields(cfg))
    return "\n".join(f"  {f.name:<{width}} = {getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg))
