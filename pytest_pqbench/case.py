"""Case: one point of the matrix (model, dataset, pruner + ratio, workflow, precision, batch)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Collection
from dataclasses import dataclass, field

from .errors import UsageError

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")


@dataclass(frozen=True, order=True)
class PrunerSpec:
    """A pruner name with its ratio, as typed by users: ``group0.2``, ``none``, ``semi24``.

    ``fixed``: the pruner's sparsity is set by its structure (its ``fixed_ratio`` attribute, e.g.
    ``none``, ``semi24``), so no ratio rides along in the token. None when not known here (a spec
    rebuilt from a results record, without the pruner registry): a zero ratio then reads as
    fixed, the only ratio a fixed-ratio pruner has.
    """

    name: str
    ratio: float = 0.0
    fixed: bool | None = field(default=None, compare=False)

    @property
    def token(self) -> str:
        fixed = self.ratio == 0.0 if self.fixed is None else self.fixed
        if self.name == "none" or fixed and self.ratio == 0.0:
            return self.name
        # "l1" + "0.3" would read as "l10.3": a name ending in a digit takes a separator
        sep = "_" if self.name[-1].isdigit() else ""
        return f"{self.name}{sep}{format_ratio(self.ratio)}"


def format_ratio(ratio: float) -> str:
    """``0.2`` -> ``"0.2"``; plain decimals (never ``1e-05``) so ids parse back and ``-k`` works."""
    text = f"{ratio:.6f}".rstrip("0").rstrip(".")
    return text or "0"


_RATIO = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+)$")


def parse_pruner(text: str, known: Collection[str], default_ratio: float = 0.2,
                 fixed: Collection[str] = ()) -> PrunerSpec:
    """Parse ``group0.2`` into ``PrunerSpec("group", 0.2)`` against the known pruner names;
    ``fixed``: those of them whose ratio is fixed by their structure (no ratio follows them;
    ``pruners.fixed_ratio_names()`` lists the registered ones).

    The longest known name that prefixes ``text`` wins, so ``l1-global0.3`` is not read as ``l1``
    and ``semi24`` is not read as ``semi2`` + ratio 4.
    """
    text = text.strip()
    for name in sorted(known, key=len, reverse=True):
        is_fixed = name in fixed
        if not text.startswith(name):
            continue
        rest = text[len(name):]
        if rest.startswith("_"):
            rest = rest[1:]
            if not rest:
                continue
        elif rest[:1].isdigit() and name[-1].isdigit() and not is_fixed and _RATIO.match(rest):
            # "l10.3" is "l1" + "0.3" or "l10" + ".3": ambiguous, so the '_' is required
            raise UsageError(f"pruner {text!r}: a name ending in a digit takes '_' before its "
                             f"ratio; did you mean {name}_{rest}?")
        if rest == "":
            return PrunerSpec(name, 0.0 if is_fixed else default_ratio, is_fixed)
        if is_fixed:
            continue
        if _RATIO.match(rest):
            ratio = round(float(rest), 6)  # ids carry 6 decimals at most
            if not 0.0 <= ratio < 1.0:
                raise UsageError(f"pruner ratio {ratio:g} in {text!r} is outside [0, 1)")
            return PrunerSpec(name, ratio, False)
        try:  # "-0.1", "nan", "1e-3": a number, but not a valid ratio; not an unknown pruner
            number = float(rest)
        except ValueError:
            continue
        raise UsageError(f"pruner ratio {rest!r} in {text!r} is invalid; a ratio is a plain "
                         f"decimal in [0, 1), e.g. {name}{'_' if name[-1].isdigit() else ''}0.2"
                         + (" (negative)" if number < 0 else ""))
    choices = ", ".join(sorted(known))
    raise UsageError(
        f"unknown pruner {text!r}; valid pruners: {choices} (a ratio may follow, e.g. group0.2)"
    )


@dataclass(frozen=True, order=True)
class Case:
    """One benchmark case. ``id`` carries one token per axis so ``-k`` selects on any of them."""

    model: str
    dataset: str
    pruner: PrunerSpec
    workflow: str
    precision: str
    batch_size: int
    input_size: int = 0  # square input in pixels; 0: the model's own (and no token in the id)

    @property
    def id(self) -> str:
        model = self.model
        if self.input_size:
            model += f"-s{self.input_size}"
        return f"{model}-{self.pruner.token}-{self.workflow}-{self.precision}-bs{self.batch_size}"

    @property
    def baseline(self) -> Case:
        """The same model and batch, unpruned, eager FP32: what ratio metrics are relative to."""
        return Case(self.model, self.dataset, PrunerSpec("none", fixed=True), "torch", "fp32",
                    self.batch_size, self.input_size)

    def axes(self) -> dict[str, object]:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "pruner": self.pruner.name,
            "ratio": self.pruner.ratio,
            "workflow": self.workflow,
            "precision": self.precision,
            "batch_size": self.batch_size,
        }


def expand(models: list[tuple], pruners: list[PrunerSpec], workflows: list[str],
           precisions: list[str], batch_sizes: list[int]) -> list[Case]:
    """The product of the axes in a stable order; ``models`` holds (model, dataset) or
    (model, dataset, input_size)."""
    cases = [
        Case(m, d, p, w, pr, bs, *size)
        for (m, d, *size), p, w, pr, bs in itertools.product(
            models, pruners, workflows, precisions, batch_sizes
        )
    ]
    seen: dict[str, Case] = {}
    for c in cases:
        seen.setdefault(c.id, c)
    return list(seen.values())


Case.__str__ = lambda self: self.id  # type: ignore[method-assign]  # pytest-benchmark's params
