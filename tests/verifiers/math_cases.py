"""Hand-written answer-equivalence cases (prediction, ground truth, equal?) from prime_spec.md §5.2.

Each pair is a final answer as a model would box it vs. a reference answer as the datasets write it. The
not-equal pairs are near misses on purpose (same digits, off by a sign, a factor 100, an open vs closed
end, a swapped tuple), so a verifier that is too lenient fails them.
"""

from __future__ import annotations

EQUAL: list[tuple[str, str]] = [
    # fractions / decimals
    ("\\frac{1}{2}", "0.5"),
    ("0.5", "\\frac{1}{2}"),
    ("\\dfrac{3}{4}", "\\frac{3}{4}"),
    ("\\tfrac{3}{4}", "\\frac34"),
    ("3/4", "\\frac{3}{4}"),
    ("\\frac{2}{4}", "\\frac{1}{2}"),  # unreduced fraction: equal value (PRIME's math_equal accepts it)
    ("\\frac{14}{3}", "\\frac{14}{3}"),
    ("-\\frac{1}{3}", "\\frac{-1}{3}"),
    ("\\frac{-1}{3}", "-\\frac13"),
    ("1.25", "\\frac{5}{4}"),
    ("1.250", "1.25"),
    (".5", "0.5"),
    ("\\frac{243}{625}", "0.3888"),  # PRIME's rel. tolerance 1e-4
    ("0.15", "\\frac{3}{20}"),
    ("\\frac{1}{3}", "0.33333"),
    ("2.0", "2"),
    ("\\frac{6}{3}", "2"),
    ("\\frac{7}{2}", "3.5"),
    # integers, signs, leading zeros
    ("25", "025"),
    ("073", "73"),
    ("+5", "5"),
    ("-50", "-50"),
    ("-1", "-1"),
    ("0", "0"),
    ("13535", "13535"),
    ("1000", "1,000"),
    ("1,000,000", "1000000"),
    ("2,220", "2220"),
    ("3159", "3159"),
    # x = 2 vs 2
    ("x=5", "5"),
    ("5", "x=5"),
    ("x = 5", "x=5"),
    ("y=-3", "-3"),
    ("k = \\frac{1}{2}", "\\frac12"),
    # \text{} and units
    ("\\text{Evelyn}", "Evelyn"),
    ("Evelyn", "\\text{Evelyn}"),
    ("\\text{(C)}", "(C)"),
    ("10\\text{ cm}", "10"),
    ("10", "10 \\text{ cm}"),
    ("12 \\text{ inches}", "12"),
    ("5\\text{ dollars}", "5"),
    ("\\$32", "32"),
    ("32", "\\$32"),
    ("90^\\circ", "90"),
    ("90", "90^\\circ"),
    ("90^{\\circ}", "90^\\circ"),
    ("30 degrees", "30^\\circ"),
    ("4\\text{ cm}^2", "4"),
    # percent
    ("50\\%", "50"),
    ("50", "50\\%"),
    ("0.5", "50\\%"),
    ("25\\%", "\\frac{1}{4}"),
    ("12.5\\%", "12.5"),
    # scientific notation
    ("4.5\\times10^{33}", "4.5e33"),
    ("4.5e33", "4.5 \\times 10^{33}"),
    ("6\\times 10^{-3}", "0.006"),
    ("0.006", "6e-3"),
    ("1.2\\times10^{5}", "120000"),
    ("3 \\times 10^8", "300000000"),
    # sqrt and radicals
    ("\\sqrt{2}", "\\sqrt2"),
    ("3\\sqrt{13}", "3\\sqrt{13}"),
    ("\\sqrt{52}", "2\\sqrt{13}"),
    ("\\sqrt{51}", "\\sqrt{51}"),
    ("11\\sqrt2", "11\\sqrt{2}"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),
    ("2^{1/2}", "\\sqrt{2}"),
    ("70 \\sqrt{2}", "70\\sqrt{2}"),
    ("\\sqrt{8}", "2\\sqrt{2}"),
    ("\\frac{3\\sqrt{3}}{2}", "\\frac{3}{2}\\sqrt{3}"),
    # pi
    ("\\pi", "\\pi"),
    ("2\\pi", "2 \\pi"),
    ("\\frac{\\pi}{2}", "\\frac12\\pi"),
    ("-\\frac{\\pi}{6}", "-\\frac{\\pi}{6}"),
    ("\\pi", "3.14"),  # PRIME tries pi = 3.14 against a decimal reference
    ("\\frac{4\\pi}{3}", "\\frac{4}{3}\\pi"),
    ("100\\pi", "100 \\pi"),
    # intervals
    ("[1,2)", "[1,2)"),
    ("(-\\infty, 3]", "(-\\infty,3]"),
    ("(0, \\infty)", "(0,\\infty)"),
    ("[-2, 5]", "\\left[ -2, 5 \\right]"),
    ("(-\\infty,-1)\\cup(1,\\infty)", "(-\\infty, -1) \\cup (1, \\infty)"),
    ("[0, \\frac{1}{2}]", "[0,0.5]"),
    # tuples / points / lists
    ("(3,\\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("(1, 2)", "(1,2)"),
    ("(-2, 7)", "\\left(-2,7\\right)"),
    ("(1,-2,3)", "(1, -2, 3)"),
    ("(0.5, 1)", "(\\frac12, 1)"),
    ("3, 5, 7", "3, 5, 7"),
    ("7, 5, 3", "3, 5, 7"),  # an unordered list of all solutions
    ("1,-2", "1, -2"),
    ("-2, 1", "1,-2"),
    # complex numbers
    ("6 - 5i", "6-5i"),
    ("-2 + 7i", "-2+7i"),
    ("7i - 2", "-2 + 7i"),
    ("6+9i", "9i+6"),
    # algebraic expressions
    ("p - q", "p-q"),
    ("-q + p", "p - q"),
    ("x^5 - x^4 + x^3 - x^2 + x - 1", "x^5-x^4+x^3-x^2+x-1"),
    ("(x+1)^2", "x^2+2x+1"),
    ("2x+2", "2(x+1)"),
    ("\\frac{x}{2}", "0.5x"),
    ("a^2b", "ba^2"),
    ("\\frac{1}{x-1}", "\\frac{1}{-1+x}"),
    ("2^{10}", "1024"),
    ("3^4", "81"),
    ("10!", "3628800"),
    ("\\binom{5}{2}", "10"),
    ("\\log_2 8", "3"),
    ("e^{0}", "1"),
    # matrices
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}"),
    ("\\begin{pmatrix} 0.5 \\\\ -1 \\end{pmatrix}", "\\begin{pmatrix} \\frac{1}{2} \\\\ -1 \\end{pmatrix}"),
    ("\\begin{bmatrix} 1 & 0 \\\\ 0 & 1 \\end{bmatrix}", "\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}"),
    # base subscripts and words
    ("52_8", "52_8"),
    ("\\text{odd}", "odd"),
    ("\\text{ODD}", "\\text{odd}"),
    # formatting noise
    ("\\left(3\\right)", "3"),
    ("\\displaystyle\\frac{1}{2}", "\\frac{1}{2}"),
    ("\\!5", "5"),
    ("5.", "5"),
    ("$5$", "5"),
]

NOT_EQUAL: list[tuple[str, str]] = [
    # not one value: a claim with no unknown, an approximation, alternatives, a hedge (issue 19)
    ("7=3", "3"),
    ("2+2=5", "5"),
    ("3 \\approx 4", "3"),
    ("3 \\lor 4", "4"),
    ("3 \\text{ (or maybe 4)}", "3"),
    ("1000050.5", "1000000"),  # an integer reference needs that integer (rel. 1e-4 accepted it)
    # numbers off by a little, a sign or a factor
    ("\\frac{1}{3}", "0.33"),
    ("0.5", "\\frac{1}{3}"),
    ("\\frac{3}{4}", "\\frac{4}{3}"),
    ("-\\frac{1}{2}", "\\frac{1}{2}"),
    ("1.2", "1.25"),
    ("1000050", "1000000"),  # integers must match exactly, not within 1e-4
    ("999", "1000"),
    ("26", "025"),
    ("-5", "5"),
    ("5000", "50"),  # PRIME's gt*100 retry is not applied without a % sign
    ("0.5", "50"),
    ("50", "5000"),
    ("2", "x=3"),
    ("x=2", "3"),
    ("0", "1"),
    ("1", "-1"),
    ("10", "100"),
    ("4.5e33", "4.5e32"),
    ("6\\times10^{-3}", "0.06"),
    ("2.5", "\\frac{2}{5}"),
    # intervals: ends and openness matter
    ("[1,2]", "[1,2)"),
    ("(1,2)", "[1,2)"),
    ("(-\\infty, 3)", "(-\\infty,3]"),
    ("[0, 1]", "[0,2]"),
    ("(0,\\infty)", "[0,\\infty)"),
    # tuples: order and length matter
    ("(2, 1)", "(1, 2)"),
    ("(1, 2, 3)", "(1, 2)"),
    ("(3, \\frac{\\pi}{2})", "(3, \\frac{\\pi}{3})"),
    ("(1,-2)", "(1,2)"),
    # candidate lists do not match a single answer
    ("1, 2, 3, 4, 5", "3"),
    ("2 \\text{ or } 3", "2"),
    ("3, 5", "3, 5, 7"),
    ("\\{1, 2\\}", "1"),
    # radicals and pi
    ("\\sqrt{3}", "\\sqrt{2}"),
    ("2\\sqrt{13}", "3\\sqrt{13}"),
    ("\\sqrt{2}", "1.41"),
    ("\\pi", "3"),
    ("2\\pi", "\\pi"),
    ("\\frac{\\pi}{6}", "-\\frac{\\pi}{6}"),
    ("\\frac{\\pi}{3}", "\\frac{\\pi}{2}"),
    # complex
    ("6+5i", "6-5i"),
    ("6", "6-5i"),
    ("-2+7i", "2-7i"),
    # expressions
    ("p + q", "p - q"),
    ("(x+1)^2", "x^2+1"),
    ("x^5 - x^4", "x^5 + x^4"),
    ("2x", "2y"),
    ("\\frac{1}{x+1}", "\\frac{1}{x-1}"),
    # matrices
    ("\\begin{pmatrix} 1 \\\\ 3 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix}1&3\\\\2&4\\end{pmatrix}"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\\\0\\end{pmatrix}"),
    # percent without the sign is not rescaled
    ("0.5", "5\\%"),
    ("50\\%", "5"),
    # words
    ("\\text{Evelyn}", "\\text{Bob}"),
    ("even", "odd"),
    # units do not rescue a wrong number
    ("12\\text{ cm}", "10"),
    ("91^\\circ", "90^\\circ"),
    # bases
    ("52_8", "52_9"),
    # empty / junk
    ("", "5"),
    ("\\frac{", "5"),
    ("}{", "1"),
]
