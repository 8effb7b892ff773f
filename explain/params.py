"""`ParamSpec`: a method parameter the UI turns into a widget and the CLI into a flag."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from explain.errors import UsageError


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of an explanation method.

    Attributes:
        kind: ``int`` | ``float`` | ``choice`` | ``bool`` | ``str``.
        default: default value.
        minimum, maximum: bounds for numbers.
        choices: allowed values for ``choice``.
        help: one line shown under the widget.
    """

    kind: str
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    help: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["choices"] is not None:
            d["choices"] = list(d["choices"])
        return d

    def coerce(self, name: str, value: Any) -> Any:
        """Validate and convert a user value; raise UsageError when it does not fit."""
        try:
            if self.kind == "int":
                value = int(value)
            elif self.kind == "float":
                value = float(value)
            elif self.kind == "bool":
                value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        except (TypeError, ValueError):
            raise UsageError(f"Parameter {name!r} must be {self.kind}, got {value!r}.") from None
        if self.minimum is not None and value < self.minimum:
            raise UsageError(f"Parameter {name!r} must be at least {self.minimum}, got {value}.")
        if self.maximum is not None and value > self.maximum:
            raise UsageError(f"Parameter {name!r} must be at most {self.maximum}, got {value}.")
        if self.kind == "choice" and self.choices and value not in self.choices:
            raise UsageError(f"Parameter {name!r} must be one of {list(self.choices)}, got {value!r}.")
        return value


#: what methods record about a run beside their parameters (an `Attribution`'s ``params``):
#: the background they compared with, in words, and its rows; what integrated gradients' step
#: raising did (`step_raising`). Never an input: a re-run that passes a run's recorded
#: parameters back has them dropped here.
RECORDED_KEYS = frozenset({"background_description", "background_rows", "step_raising"})
#: the key of a record's per-input values (`explain.attribution.Attribution`'s ``params``):
#: ``{name: [N values]}``, what each input used of a parameter its method adapted per input.
#: Not a method parameter: `explain.output.methods.base.Explainer.explain` takes it as its own
#: argument, so passing a record's params back reproduces each input as it was computed.
PER_INPUT = "per_input"


def resolve_params(specs: dict[str, ParamSpec], given: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with the given values, each validated (`RECORDED_KEYS` and `PER_INPUT` ignored)."""
    given = {k: v for k, v in given.items() if (k not in RECORDED_KEYS and k != PER_INPUT) or k in specs}
    unknown = set(given) - set(specs)
    if unknown:
        raise UsageError(f"Unknown parameter(s): {', '.join(sorted(unknown))}.")
    return {name: spec.coerce(name, given.get(name, spec.default)) for name, spec in specs.items()}


def select_per_input(params: dict[str, Any], rows: Any) -> dict[str, Any]:
    """Recorded ``params`` for a subset of their inputs: the `PER_INPUT` values of ``rows`` (indices,
    or a slice) only, everything else as it is (a report that explains the first rows of a run)."""
    per_input = params.get(PER_INPUT)
    if not per_input:
        return dict(params)
    picked = {}
    for name, values in per_input.items():
        values = list(values)
        picked[name] = values[rows] if isinstance(rows, slice) else [values[int(i)] for i in rows]
    return {**params, PER_INPUT: picked}
