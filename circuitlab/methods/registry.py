"""The method registries: every node and edge method with its function and declared options.

Why: the API, the command line, the ground-truth checks and the benchmarks all iterate these
registries, so a method written in one file is available everywhere, and an option name that no
field declares is refused (naming the nearest valid one) instead of being swallowed. A method is
one module in ``circuitlab.methods`` (node methods) or ``circuitlab.circuits`` (edge methods):

    @dataclass
    class MineOptions(NodeOptions):
        strength: float = 1.0
        \"\"\"How hard to push (why it matters).\"\"\"

    @node_method("mine", MineOptions)
    def mine(model, task, sites, direction, positions, layers=None, strength=1.0) -> Result: ...

The function keeps ordinary keyword arguments (so it can be called directly); registration checks
that they are exactly the dataclass's fields with the same defaults. Modules of the two packages
are imported the first time a registry is read, which registers what they define.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from circuitlab.discovery import import_modules
from circuitlab.validate import COMMON_OPTIONS, check_choice, suggest

NODE_ARGUMENTS = ("model", "task", "sites", "direction", "positions")
"""What ``cl.patch`` passes to every node method itself (not user options)."""
EDGE_ARGUMENTS = ("model", "task", "direction")
"""What ``circuits.edges`` passes to every edge method itself."""


@dataclass
class NodeOptions:
    """Options every node method declares."""

    layers: Optional[Sequence[int]] = None
    """Layers whose nodes are scored (None: every layer)."""


@dataclass(frozen=True)
class Method:
    """One registered method."""

    name: str
    """What users pass as ``method=``."""
    fn: Callable
    """The implementation: the registry's fixed arguments, then one keyword per option."""
    options: type
    """Dataclass declaring the method's options (a docstring and a default per field)."""
    kind: str
    """'node' or 'edge'."""
    order: int = 100
    """Where the method is listed (built-in methods keep their historical order)."""
    several: Optional[Callable] = None
    """For node methods that score several site families from one shared pass: the function
    taking a list of families (same options) and returning ``{family: Result}``."""

    @property
    def option_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.options)]

    @property
    def summary(self) -> str:
        """First sentence of the function's docstring (for help texts)."""
        first = (inspect.getdoc(self.fn) or self.name).split("\n\n")[0].replace("\n", " ")
        return first.split(". ")[0].rstrip(".")

    def check(self, options: Mapping[str, Any]) -> None:
        """Reject option names this method does not declare (nor accept as common options)."""
        valid = self.option_names
        valid += [o for o in COMMON_OPTIONS if o not in valid]
        for name in options:
            if name not in valid:
                raise ValueError(f"unknown option {name!r} for method {self.name!r}{suggest(name, valid)}")

    def declared(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Every declared option: the given values over the defaults (common options the method
        does not declare are dropped). Call :meth:`check` first."""
        opts = self.options(**{k: v for k, v in options.items() if k in self.option_names})
        return {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}

    def parse(self, text: Mapping[str, str]) -> dict[str, Any]:
        """Typed option values from their command-line spelling, by each field's type."""
        self.check(text)
        hints = typing.get_type_hints(self.options)
        values = {k: _convert(self.name, k, v, hints[k]) for k, v in text.items() if k in hints}
        self.options(**values)  # the dataclass's own checks (e.g. a known variant) run now
        return values


class Registry(Mapping[str, Method]):
    """Methods of one kind by name, filled by the ``register`` decorator of their modules."""

    def __init__(self, kind: str, arguments: Sequence[str], packages: Sequence[str]):
        self.kind, self.arguments, self.packages = kind, tuple(arguments), tuple(packages)
        self._methods: dict[str, Method] = {}
        self._loaded = False

    def register(self, name: str, options: type, order: int = 100, several: Optional[Callable] = None):
        """Decorator registering ``fn`` as method ``name`` with the ``options`` dataclass."""
        def add(fn: Callable) -> Callable:
            if name in self._methods and self._methods[name].fn.__qualname__ != fn.__qualname__:
                raise ValueError(f"{self.kind} method {name!r} is registered twice "
                                 f"({self._methods[name].fn.__module__} and {fn.__module__}); rename one")
            for f in (fn, several) if several is not None else (fn,):
                _check_signature(f, options, self.arguments, name, several is not None and f is several)
            self._methods[name] = Method(name, fn, options, self.kind, order, several)
            return fn
        return add

    def _load(self) -> None:
        """Import every module of the registry's packages once (each registers its methods)."""
        if self._loaded:
            return
        self._loaded = True  # set first: a module that reads the registry while loading sees it as is
        try:
            for pkg in self.packages:
                import_modules(pkg)
        except BaseException:
            self._loaded = False
            raise

    def __getitem__(self, name: str) -> Method:
        self._load()
        check_choice("method", name, list(self))
        return self._methods[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(sorted(self._methods, key=lambda n: (self._methods[n].order, n)))

    def __len__(self) -> int:
        self._load()
        return len(self._methods)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._methods


NODE_METHODS = Registry("node", NODE_ARGUMENTS, ["circuitlab.methods"])
"""Node methods (``cl.patch(..., method=name)``): exact patching and its estimators."""
EDGE_METHODS = Registry("edge", EDGE_ARGUMENTS, ["circuitlab.circuits", "circuitlab.methods"])
"""Edge methods (``circuits.edges(..., method=name)``): exact edge patching and its estimators."""
node_method = NODE_METHODS.register
edge_method = EDGE_METHODS.register


def _check_signature(fn: Callable, options: type, arguments: Sequence[str], name: str, several: bool) -> None:
    """``fn`` takes the registry's fixed ``arguments`` then exactly the option fields, with the
    same defaults: the dataclass is the one description of what the method accepts."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"options of method {name!r} must be a dataclass, not {options!r}")
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params):
        raise TypeError(f"{fn.__qualname__} (method {name!r}) takes *args/**kwargs; declare each option instead")
    head = [p.name for p in params[: len(arguments)]]
    if head != list(arguments):
        raise TypeError(f"{fn.__qualname__} (method {name!r}) must start with arguments {', '.join(arguments)}, "
                        f"not {', '.join(head)}")
    given = {p.name: p.default for p in params[len(arguments):]}
    declared = {f.name: _default(f) for f in dataclasses.fields(options)}
    if set(given) != set(declared):
        raise TypeError(f"{fn.__qualname__} (method {name!r}) takes options {sorted(given)} but "
                        f"{options.__name__} declares {sorted(declared)}; make them the same")
    for k, v in declared.items():
        if given[k] is not v and given[k] != v:
            raise TypeError(f"{fn.__qualname__} (method {name!r}) defaults {k}={given[k]!r} but "
                            f"{options.__name__} defaults it to {v!r}; make them the same")


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return inspect.Parameter.empty


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _convert(method: str, name: str, text: str, hint) -> Any:
    """``text`` as a value of type ``hint`` (int, float, bool, str, a list of ints written
    ``0+2+5``, or None written ``none`` where the field is optional)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        if text.strip().lower() == "none":
            return None
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else hint
    origin = typing.get_origin(hint)
    what = f"option {name}={text!r} of method {method!r}"
    try:
        if hint is bool:
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            raise ValueError
        if hint in (int, float, str):
            return hint(text)
        item = (typing.get_args(hint) or (str,))[0]
        if origin in (list, tuple, collections.abc.Sequence) and item in (int, float, str):
            return [item(t) for t in text.split("+")]
    except ValueError:
        kind = getattr(hint, "__name__", str(hint))
        example = {"bool": "true or false", "int": "a whole number", "float": "a number"}.get(kind, kind)
        if origin is not None:
            example = "numbers joined by + (e.g. 0+2+5)"
        raise ValueError(f"{what} is not {example}") from None
    raise ValueError(f"{what} cannot be set from the command line (its type is {hint}); use the Python API")


def parse_specs(text: str, registry: Registry) -> list[tuple[str, dict[str, Any]]]:
    """Methods and their options from ``exact,ig:steps=32,variant=activations``: comma-separated
    entries; an entry with ``=`` is another option of the method before it. Every name and value
    is checked against ``registry`` before anything runs."""
    out: list[tuple[str, dict[str, str]]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ValueError(f"--method {text!r} has an empty entry; give comma-separated methods like "
                             f"{','.join(list(registry)[:2])}")
        if "=" in part.split(":", 1)[0]:  # NAME=VALUE: one more option of the method before it
            if not out:
                raise ValueError(f"--method {text!r} starts with an option ({part!r}); write METHOD:{part}")
            opt = part
        else:
            name, _, opt = (t.strip() for t in part.partition(":"))
            registry[name]  # an unknown name is refused here, naming the nearest
            out.append((name, {}))
            if not opt:
                continue
        key, eq, value = (t.strip() for t in opt.partition("="))
        if not eq or not key:
            raise ValueError(f"--method option {opt!r} is not NAME=VALUE (e.g. ig:steps=32,variant=activations)")
        out[-1][1][key] = value
    return [(name, registry[name].parse(opts)) for name, opts in out]


def spec_label(name: str, options: Mapping[str, Any]) -> str:
    """``ig:steps=32,variant=activations`` (just the name without options)."""
    if not options:
        return name
    return name + ":" + ",".join(f"{k}={option_text(v)}" for k, v in options.items())


def option_text(value: Any) -> str:
    """An option value as the command line spells it (lists joined by ``+``)."""
    return "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
