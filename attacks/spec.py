"""Attack specs: the text that names an attack on the command line, in suite files and records.

A spec is a registered name (``clean``, ``pgd20``, ``autoattack``, ``aa-lite``, or a plugin's) or a
member of a registered family with options: ``ta:NAME[:key=value...]`` for torchattacks, e.g.
``ta:CW``, ``ta:PGDL2:eps=0.5:steps=20``. Fields are colon-separated because ``--attacks`` is
comma-separated. Values parse as bool (``true``/``false``), ``none``, int, float (also ``8/255``)
or else str. Options written in the spec win over keyword overrides (the evaluation config's).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from attacks.base import ATTACKS, Attack
from benchmark.errors import AcbenchError, ConfigError, unknown


@dataclass(frozen=True)
class ParsedSpec:
    name: str  # registered name (lowercase)
    argument: str | None  # family member (e.g. torchattacks class), None for a plain attack
    options: dict[str, Any]  # parsed values
    raw_options: tuple[tuple[str, str], ...]  # as written, for labels and the canonical spec


def parse_value(text: str) -> Any:
    """``"true"`` -> True, ``"none"`` -> None, ``"20"`` -> 20, ``"0.5"``/``"8/255"`` -> float, else str."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    num, sep, den = text.partition("/")
    if sep:
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            pass
    return text


def _fixed_names() -> list[str]:
    names = [n for n in ATTACKS.names() if not ATTACKS.meta(n).get("argument")]
    return sorted(names, key=lambda n: ATTACKS.meta(n).get("order", float("inf")))


def _families() -> list[str]:
    return [n for n in ATTACKS.names() if ATTACKS.meta(n).get("argument")]


def parse_spec(spec: str) -> ParsedSpec:
    """Split and check the shape of ``spec`` (not yet its options); errors name the problem."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"an attack spec must be a non-empty string, got {spec!r}")
    fields = [f.strip() for f in spec.strip().split(":")]
    name = fields[0].lower()
    if name not in ATTACKS:
        raise unknown("attack", fields[0], [*_fixed_names(), *(f"{f}:<NAME>" for f in _families())])
    meta = ATTACKS.meta(name)
    rest = fields[1:]
    argument = None
    if meta.get("argument"):
        if not rest or not rest[0] or "=" in rest[0]:
            raise ConfigError(f"attack spec {spec!r}: {name} needs a {meta['argument']}: {name}:NAME[:key=value...]")
        argument, rest = rest[0], rest[1:]
    elif rest:
        raise ConfigError(f"attack {name!r} takes no options in a spec, got {spec!r}")
    raw: list[tuple[str, str]] = []
    for f in rest:
        key, sep, value = f.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"attack spec {spec!r}: {f!r} is not key=value")
        if key in dict(raw):
            raise ConfigError(f"attack spec {spec!r}: option {key!r} given twice")
        raw.append((key, value))
    return ParsedSpec(name, argument, {k: parse_value(v) for k, v in raw}, tuple(raw))


def get_attack(spec: str, **overrides: Any) -> Attack:
    """The attack ``spec`` (a callable ``(model, x, y) -> x_adv``), defaults updated by ``overrides``."""
    p = parse_spec(spec)
    factory = ATTACKS.get(p.name)
    args = () if p.argument is None else (p.argument,)
    try:
        return factory(*args, **{**overrides, **p.options})
    except TypeError as e:
        raise ConfigError(f"bad option for attack {spec!r}: {e}") from None


def eval_options(spec: str, cfg: Any) -> dict[str, Any]:
    """The options attack ``spec`` takes from an evaluation config (``eps``, ``seed``, ``batch_size``)."""
    hook = ATTACKS.meta(parse_spec(spec).name).get("eval_options")
    return dict(hook(cfg)) if hook else {}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def attack_settings(spec: str, **overrides: Any) -> dict[str, Any]:
    """Every setting attack ``spec`` runs with (JSON-serialisable): this goes into the record."""
    attack = get_attack(spec, **overrides)
    meta = ATTACKS.meta(parse_spec(spec).name)
    if callable(getattr(attack, "settings", None)):
        own = attack.settings()
    elif dataclasses.is_dataclass(attack):
        own = {k: v for k, v in dataclasses.asdict(attack).items() if k != "last_warnings"}
    else:
        own = {}
    return _jsonable({
        "spec": spec,
        "label": attack_label(spec),
        "threat_model": getattr(attack, "threat_model", meta.get("threat_model")),
        **own,
    })


def attack_label(spec: str) -> str:
    """The table label of ``spec``: "PGD-20", "AutoAttack", "CW", "PGDL2 (eps=0.5, steps=20)"; else ``spec``."""
    try:
        p = parse_spec(spec)
        if p.argument is None:
            return str(ATTACKS.meta(p.name).get("label", p.name))
        member = str(getattr(get_attack(spec), "name", p.argument))
    except AcbenchError:
        return spec
    if member in {str(ATTACKS.meta(n).get("label")) for n in _fixed_names()}:
        member = f"{ATTACKS.meta(p.name).get('label', p.name)} {member}"  # "torchattacks AutoAttack"
    options = ", ".join(f"{k}={v}" for k, v in p.raw_options)
    return f"{member} ({options})" if options else member


def attack_names() -> list[str]:
    """The registered attacks a spec can name alone (families such as ``ta`` need a member)."""
    return _fixed_names()


def check_attack_spec(spec: str) -> str:
    """``spec`` in canonical form (lowercase name, the family member's own spelling) if it builds.

    Call it before running anything: an unknown attack, class or option is reported at once.
    """
    p = parse_spec(spec)
    attack = get_attack(spec)
    if p.argument is None:
        return p.name
    member = getattr(attack, "name", p.argument)
    return ":".join([p.name, str(member), *(f"{k}={v}" for k, v in p.raw_options)])
