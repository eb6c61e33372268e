"""The waterz scoring functions: their names, C++ types and which are prebuilt.

:data:`SCORING_FUNCTIONS` maps the names a config uses to the C++ types
waterz knows them by; :func:`prebuilt_scoring_functions` says which of them
waterz ships compiled (the others need witty, a C++ compiler and boost).

Examples
--------
>>> scoring_function("mean")
'OneMinus<MeanAffinity<RegionGraphType,ScoreValue>>'
"""

from __future__ import annotations

__all__ = ["SCORING_FUNCTIONS", "prebuilt_scoring_functions", "scoring_function"]


# the quantiles waterz compiles ahead of time (waterz._codegen.QUANTILES)
_QUANTILES = tuple(range(10, 100, 5))

SCORING_FUNCTIONS: dict[str, str] = {
    "mean": "OneMinus<MeanAffinity<RegionGraphType,ScoreValue>>",
    **{
        f"hist_quant_{q}": (
            f"OneMinus<HistogramQuantileAffinity<RegionGraphType,{q},ScoreValue,256,false>>"
        )
        for q in _QUANTILES
    },
    # MaxAffinity and MinAffinity are aliases in waterz's MergeFunctions.hpp,
    # but not compiled ahead of time: they need witty, a C++ compiler and the
    # boost headers on first use
    "max": "OneMinus<MaxAffinity<RegionGraphType,ScoreValue>>",
    "min": "OneMinus<MinAffinity<RegionGraphType,ScoreValue>>",
}
"""Names of scoring functions, and the C++ types waterz knows them by.

All of them score with one minus an affinity statistic of the boundary, such
that a score is in ``[0, 1]`` and lower scores are merged first.
"""


def scoring_function(name: str) -> str:
    """The waterz C++ type of the scoring function called ``name``.

    Parameters
    ----------
    name : str
        One of the keys of :data:`SCORING_FUNCTIONS`: ``"mean"``,
        ``"hist_quant_N"`` (N in 10, 15, ..., 95), ``"max"`` or ``"min"``.

    Returns
    -------
    str
        The C++ type string to pass to ``waterz.agglomerate``.

    Raises
    ------
    ValueError
        If ``name`` is not a known scoring function.
    """
    try:
        return SCORING_FUNCTIONS[name]
    except (KeyError, TypeError):
        valid = ", ".join(SCORING_FUNCTIONS)
        raise ValueError(
            f"unknown scoring function {name!r}; valid names are: {valid}"
        ) from None


def _prebuilt_specs() -> set[tuple[str, int]]:
    """The (C++ type without spaces, queue bins) pairs waterz ships compiled.

    Read from waterz's private registry, as waterz has no public one; an
    empty set if that ever goes away (then every name counts as JIT).
    """
    try:
        from waterz._codegen import iter_specs
    except ImportError:  # pragma: no cover - a waterz without the registry
        return set()
    return {(_without_spaces(f), int(bins)) for f, bins in iter_specs()}


def _without_spaces(function: str) -> str:
    """A C++ type string without whitespace, to compare spellings."""
    return "".join(function.split())


def prebuilt_scoring_functions(discretize_queue: int = 256) -> list[str]:
    """Names of the scoring functions that run without JIT compilation.

    Parameters
    ----------
    discretize_queue : int, default 256
        The number of bins of waterz's merge queue (0: exact priority queue).

    Returns
    -------
    list of str
        The names in :data:`SCORING_FUNCTIONS` that waterz has compiled ahead
        of time for that queue.
    """
    specs = _prebuilt_specs()
    return [
        name
        for name, function in SCORING_FUNCTIONS.items()
        if (_without_spaces(function), int(discretize_queue)) in specs
    ]
