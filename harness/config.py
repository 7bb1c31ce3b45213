"""One declaration per option: a config dataclass's field says its default, help, flag and parser
once, and both the click command and the Python API are generated from it.

    @dataclass(frozen=True)
    class Options:
        samples: int = setting(1, "Haystack draws per cell.")        # --samples, an int, default 1
        fast: bool = setting(False, "Batched decoding.")             # --fast, an on/off flag
        seq_len: int = setting(help="Training length, e.g. 8k.", parse=parse_length)   # required

    @click_options(Options)            # the command gets every setting that has a flag
    def command(**flags): ...
    check_keywords(given, Options)     # the API's unknown-argument check, the one TypeError
    signature(Options)                 # the API's introspectable signature (help(), IDEs)

The anchors: torchtitan's one config dataclass per job, and the suites' own ``Options``.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import MISSING, dataclass, fields
from typing import Any, Callable

import click

SAME = object()   # a setting's cli_default when the command line's default is the field's own



@dataclass(frozen=True)
class Setting:
    """One option as a dataclass field declares it."""

    name: str                      # the field (the API's keyword)
    flag: str | None               # the command-line flag; None: API and presets only
    default: Any                   # MISSING: required
    kind: type                     # int, float, str or bool (a bool is an on/off flag)
    help: str
    metavar: str | None = None
    parse: Callable | None = None  # (text, flag) -> value: the command line's text into the field's value
    negatable: bool = False        # a bool flag that also has --no-NAME (for a default of True)
    cli_default: Any = SAME        # what the command line passes when the flag is absent
    to_text: Callable | None = None  # value -> the flag's text, where str() is not it (parse's inverse)

    @property
    def field(self) -> str:
        return self.name

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def given(self, value) -> bool:
        """Whether ``value`` differs from what leaving the option out means."""
        return not self.required and value != self.default and value is not None


def setting(default: Any = MISSING, help: str = "", *, flag: str | None = "", kind: type | None = None,
            metavar: str | None = None, parse: Callable | None = None, negatable: bool = False,
            cli_default: Any = SAME, to_text: Callable | None = None,
            default_factory: Callable | None = None) -> Any:
    """A dataclass field that is an option. ``flag``: "" derives ``--field-name``; None keeps it off
    the command line. ``kind``: the value's type (default: the default's type, else str)."""
    kind = kind or (type(default) if default not in (MISSING, None) else str)
    meta = {"setting": dict(flag=flag, kind=kind, help=help, metavar=metavar, parse=parse, negatable=negatable,
                            cli_default=cli_default, to_text=to_text)}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def settings(cls: type) -> list[Setting]:
    """The options a config dataclass declares, in declaration order."""
    out = []
    for f in fields(cls):
        if "setting" not in f.metadata:
            continue
        m = dict(f.metadata["setting"])
        flag = m.pop("flag")
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        out.append(Setting(f.name, "--" + f.name.replace("_", "-") if flag == "" else flag, default, **m))
    return out


def flagged(*types: type) -> list[Setting]:
    """Every setting with a command-line flag, over ``types`` in order."""
    return [s for t in types for s in settings(t) if s.flag]


def click_options(*types: type, skip: tuple[str, ...] = ()) -> Callable:
    """A decorator adding every flagged setting of ``types`` to a click command, in declaration order."""
    def decorate(command):
        for s in reversed([s for s in flagged(*types) if s.name not in skip]):
            command = click_option(s)(command)
        return command
    return decorate


def click_option(s: Setting) -> Callable:
    if s.kind is bool:
        decls = f"{s.flag}/--no-{s.flag[2:]}" if s.negatable else s.flag
        return click.option(decls, s.name, is_flag=True, default=bool(s.default), show_default=s.negatable,
                            help=s.help)
    default = s.cli_default if s.cli_default is not SAME else (None if s.required else s.default)
    kind = _Parsed(s) if s.parse else s.kind
    if s.required and s.cli_default is SAME:   # no default at all: click then refuses a missing flag
        return click.option(s.flag, s.name, type=kind, required=True, metavar=s.metavar, help=s.help)
    return click.option(s.flag, s.name, type=kind, default=default, show_default=default is not None,
                        metavar=s.metavar, help=s.help)


class _Parsed(click.ParamType):
    """A flag's text through its setting's parser: ``--seq-len 8k`` arrives as 8192. A mistake is the
    parser's one-line UserError, as it is from the Python API."""

    name = "text"

    def __init__(self, s: Setting):
        self.setting = s

    def convert(self, value, param, ctx):
        return self.setting.parse(value, self.setting.flag) if isinstance(value, str) else value


def check_keywords(given: dict, *types: type, extra: tuple[str, ...] = (), where: str = "") -> None:
    """An unknown keyword is a TypeError, as for any Python call, naming the accepted ones."""
    known = {s.name for t in types for s in settings(t)} | set(extra)
    for key in given:
        if key not in known:
            raise TypeError(f"{where or 'call'}() got an unexpected keyword argument {key!r}; accepted: "
                            f"{', '.join(sorted(known))}")


def signature(*types: type, leading: tuple[inspect.Parameter, ...] = (),
              trailing: tuple[inspect.Parameter, ...] = ()) -> inspect.Signature:
    """An API function's signature from the settings (its keywords, with their defaults); a name
    in ``leading`` or ``trailing`` is declared there instead."""
    named = {p.name for p in (*leading, *trailing)}
    params = [inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY,
                                default=None if s.required else s.default, annotation=s.kind.__name__)
              for t in types for s in settings(t) if s.name not in named]
    return inspect.Signature([*leading, *params, *trailing])


def split(given: dict, *types: type) -> list[dict]:
    """``given`` keywords sorted by which of ``types`` declares each (one dict per type)."""
    return [{s.name: given[s.name] for s in settings(t) if s.name in given} for t in types]
