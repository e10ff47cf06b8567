"""Math answer equivalence: PRIME's normalisations, then math-verify, then a numeric check.

PRIME grades in two stages (prime_spec.md §5.2): a PRM800K/Hendrycks string normalisation match, then a
ToRA/Qwen-style ``math_equal`` (sympy, numeric tolerance 1e-4). Here:

1. ``normalize_answer`` applies the normalisations PRIME applies (``\\left``/``\\right``, ``\\dfrac``,
   ``\\text{}``, units, ``$``, ``%``, degrees, thousands separators, ``x=`` prefixes, leading zeros of
   integers, ``\\frac12``/``\\sqrt2`` shorthands). Equal normal forms are equal answers.
2. math-verify (HF) parses both sides and compares them symbolically and numerically (intervals, tuples,
   sets, matrices, ``\\sqrt``, ``\\pi``, unreduced fractions, scientific notation).
3. A numeric fallback with PRIME's relative tolerance 1e-4, except that an integer reference needs exactly
   that value (two integers: PRIME's stage (a) rule, rel. 1e-4 would accept 1000050 for 1000000; a decimal
   answer too: 1000050.5 is not 1000000, 2.0 is 2), and ``\\pi`` is also tried as 3.14 when the reference is
   a decimal (PRIME does the same).
Before 2 and 3, an answer that is not one value is refused (``_malformed``): a relation with no unknown on
its left ("7=3"), or an approximation, alternative or hedge the reference does not have.

Deliberate difference from PRIME: its ``math_equal`` also accepts ``gt*100`` and ``gt/100`` for any answer,
so 5000 would match 50. Here the percent scaling only happens when a ``%`` is written (math-verify reads
``50\\%`` as 1/2; the normaliser drops the sign), which keeps "0.5" vs "50\\%" but not 5000 vs 50.

``answers_equivalent`` runs sympy and can hang or explode: call it only inside a killable worker
(``math_api`` does). math-verify's own SIGALRM timeouts are disabled: the worker's hard kill is the limit.
"""

from __future__ import annotations

import logging
import math
import re

_TEXT_MACROS = ("\\text", "\\textbf", "\\textit", "\\mathrm", "\\mathbf", "\\mbox", "\\operatorname")
# Unit words PRIME's normaliser removes (a trailing unit after a number).
_UNITS = (
    "degrees",
    "degree",
    "cm",
    "centimeters",
    "centimeter",
    "meters",
    "meter",
    "m",
    "km",
    "kilometers",
    "inches",
    "inch",
    "feet",
    "foot",
    "ft",
    "miles",
    "mile",
    "units",
    "unit",
    "square",
    "sq",
    "cubic",
    "dollars",
    "dollar",
    "cents",
    "cent",
    "hours",
    "hour",
    "minutes",
    "minute",
    "seconds",
    "second",
    "days",
    "day",
    "weeks",
    "week",
    "years",
    "year",
    "mph",
    "kg",
    "g",
    "grams",
    "gram",
    "pounds",
    "pound",
    "liters",
    "liter",
    "ml",
    "students",
    "people",
    "ways",
    "points",
    "times",
)
_UNIT_TAIL = re.compile(r"^(.*?\d)\s*(?:\\ )*(?:\^?\{?\\circ\}?)?\s*(?:" + "|".join(_UNITS) + r")(?:\^?\{?[23]\}?)?$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_INT = re.compile(r"^[+-]?\d+$")
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?$", re.IGNORECASE)
_SCI = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))e([+-]?\d+)$", re.IGNORECASE)
_LHS_ASSIGN = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*(?!=)")
_FRAC_SHORT = re.compile(r"\\frac(\d)(\d)")
_FRAC_HALF = re.compile(r"\\frac\{([^{}]*)\}(\d)")
_SQRT_SHORT = re.compile(r"\\sqrt(\w)")
_BASE_NUMERAL = re.compile(r"^([0-9A-Za-z]+)_\{?(\d+)\}?$")  # "52_8": a numeral in base 8
_REL_TOL = 1e-4  # PRIME math_equal's numeric tolerance


def _unwrap_macro(s: str, macro: str) -> str:
    """Replace ``\\macro{X}`` by ``X`` (brace matched, all occurrences)."""
    out = []
    i = 0
    while True:
        j = s.find(macro + "{", i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        out.append(s[i:j])
        k = j + len(macro)
        depth = 0
        end = -1
        for m in range(k, len(s)):
            if s[m] == "{":
                depth += 1
            elif s[m] == "}":
                depth -= 1
                if depth == 0:
                    end = m
                    break
        if end < 0:
            out.append(s[j:])
            return "".join(out)
        out.append(s[k + 1 : end])
        i = end + 1


def normalize_answer(answer: str) -> str:
    """Canonical string form of a final answer (PRIME/Hendrycks-style normalisation, no sympy)."""
    s = answer.strip()
    for macro in ("\\boxed", "\\fbox"):
        s = _unwrap_macro(s, macro)
    s = s.replace("\n", " ").replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\:", "")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("°", "")
    for macro in _TEXT_MACROS:
        s = _unwrap_macro(s, macro)
    s = s.replace("~", " ").replace("\\ ", " ")
    s = s.strip().rstrip(".").strip()
    m = _UNIT_TAIL.match(s)
    if m:
        s = m.group(1)
    m = _LHS_ASSIGN.match(s)
    if m and "," not in s:  # "x = 5" -> "5"; not "x=1, y=2" (a system's solution stays whole)
        s = s[m.end() :]
    s = s.replace(" ", "")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF.sub(r"\\frac{\1}{\2}", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    if s.startswith("."):
        s = "0" + s
    if _INT.match(s):
        s = str(int(s))  # AIME "025" -> "25", "+3" -> "3"
    elif _NUMBER.match(s) and "e" not in s.lower() and "." in s:
        s = s.rstrip("0").rstrip(".") if "." in s else s  # "1.50" -> "1.5", "2.0" -> "2"
    return s


def _sci_to_latex(s: str) -> str:
    m = _SCI.match(s)
    return f"{m.group(1)}\\times10^{{{m.group(2)}}}" if m else s


def _as_float(s: str) -> float | None:
    if _NUMBER.match(s):
        try:
            return float(s)
        except ValueError:
            return None
    return None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=1e-12)


def _numeric_equal(pred_n: str, gt_n: str, gt_parsed: list, pred_parsed: list) -> bool:
    """PRIME-style numeric check on the evaluated values (both sides must be plain numbers)."""
    gv = _as_float(gt_n)
    pv = _as_float(pred_n)
    if gv is not None and pv is not None:
        if _INT.match(gt_n) and _INT.match(pred_n):
            return int(gt_n) == int(pred_n)
        if _INT.match(gt_n):  # an integer reference and a decimal answer: the value must be that integer
            return pv == gv
        return _close(pv, gv)
    import sympy

    def value(parsed: list) -> complex | None:
        for cand in parsed:
            if isinstance(cand, sympy.Basic) and getattr(cand, "is_number", False):
                try:
                    return complex(sympy.N(cand, 30))
                except (TypeError, ValueError):
                    return None
        return None

    g = value(gt_parsed) if gv is None else complex(gv)
    p = value(pred_parsed) if pv is None else complex(pv)
    if g is None or p is None:
        return False
    if abs(g.imag) > 0 or abs(p.imag) > 0:
        return math.isclose(abs(g - p), 0.0, abs_tol=_REL_TOL * max(abs(g), 1e-12))
    if _close(p.real, g.real):
        return True
    if gv is not None and "\\pi" in pred_n:  # PRIME also tries pi = 3.14 against a decimal reference
        p314 = value(_parse(pred_n.replace("\\pi", "(3.14)")))
        return p314 is not None and abs(p314.imag) == 0 and _close(p314.real, g.real)
    return False


def _parse(s: str) -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse(
        "\\boxed{" + s + "}",
        extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
        parsing_timeout=None,
    )


# Answers that state something other than one value. A relation whose left side names no unknown ("7=3",
# "2+2=5": math-verify would compare its right side), or an approximation / alternative / hedge the reference
# does not contain ("3 \approx 4", "3 \lor 4", "3 \text{ (or maybe 4)}"). "x = 3" stays an answer of 3.
_HEDGES = ("\\approx", "\\lor", "\\vee", "\\sim", "\\simeq")
_HEDGE_WORDS = re.compile(r"\b(?:or|maybe|perhaps|possibly|approximately|about|roughly)\b", re.IGNORECASE)
_LATEX_COMMAND = re.compile(r"\\[a-zA-Z]+")


def _malformed(pred: str, ground_truth: str) -> bool:
    for hedge in _HEDGES:
        if hedge in pred and hedge not in ground_truth:
            return True
    if _HEDGE_WORDS.search(pred) and not _HEDGE_WORDS.search(ground_truth):
        return True
    if "=" in pred and "=" not in ground_truth:
        lhs = _LATEX_COMMAND.sub("", pred.split("=", 1)[0])
        if not re.search(r"[a-zA-Z]", lhs):  # no unknown on the left: a claim, not an assignment
            return True
    return False


def answers_equivalent(pred: str | None, ground_truth: str) -> bool:
    """True if the extracted answer ``pred`` is mathematically equal to ``ground_truth``.

    May run sympy for an unbounded time: call only under a hard timeout in a separate process.
    """
    if pred is None or not pred.strip():
        return False
    pred_n = normalize_answer(pred)
    gt_n = normalize_answer(ground_truth)
    if not pred_n:
        return False
    if pred_n == gt_n:
        return True
    if _malformed(pred, ground_truth):
        return False
    gb, pb = _BASE_NUMERAL.match(gt_n), _BASE_NUMERAL.match(pred_n)
    if gb or pb:  # sympy reads "52_8" as a subscripted symbol; a base-b numeral must match digit for digit
        return bool(gb and pb and gb.groups() == pb.groups())
    if pred_n.isalpha() and gt_n.isalpha():  # word answers ("Evelyn", "odd"): case-insensitive
        return pred_n.casefold() == gt_n.casefold()
    from math_verify import verify

    # math-verify gets the raw strings: it has its own LaTeX normalisation and needs the "%" and units that
    # normalize_answer drops (0.5 vs 50\\%).
    gt_parsed = _parse(_sci_to_latex(ground_truth.strip()))
    pred_parsed = _parse(_sci_to_latex(pred.strip()))
    if gt_parsed and pred_parsed and verify(gt_parsed, pred_parsed, timeout_seconds=None):
        return True
    return _numeric_equal(pred_n, gt_n, gt_parsed, pred_parsed)


def quiet_math_verify_logs() -> None:
    """math-verify warns once per process that its timeouts are off (we kill the worker instead)."""
    for name in ("math_verify", "math_verify.parser", "math_verify.grader", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)
