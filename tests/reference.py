"""Reference values of the alpha-beta divergence, independent of the library.

`ab_divergence_float64` evaluates the textbook formula and its four limits in
float64, choosing the formula by exact comparison of alpha and beta with 0.
`ab_divergence_mpmath` evaluates the same formulas with 50 significant digits,
which keeps points close to the special lines (where the general formula
cancels) exact to float64 precision.
"""

import mpmath
import numpy as np


def softmax64(logits, temperature=1.0):
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def _terms_float64(p, q, alpha, beta):
    total = alpha + beta
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if alpha == 0.0 and beta == 0.0:
            return 0.5 * (np.log(p) - np.log(q)) ** 2
        if beta == 0.0:
            pa, qa = p**alpha, q**alpha
            return (pa * np.log(pa / qa) - pa + qa) / alpha**2
        if alpha == 0.0:
            pb, qb = p**beta, q**beta
            return (qb * np.log(qb / pb) - qb + pb) / beta**2
        if total == 0.0:
            ratio = (q / p) ** alpha
            return (np.log(ratio) + 1.0 / ratio - 1.0) / alpha**2
        return -(
            p**alpha * q**beta
            - alpha / total * p**total
            - beta / total * q**total
        ) / (alpha * beta)


def ab_divergence_float64(p, q, alpha, beta):
    """Divergence per row of probability arrays `[..., classes]`, in float64."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    return np.sum(_terms_float64(p, q, float(alpha), float(beta)), axis=-1)


def ab_divergence_logits_float64(teacher_logits, student_logits, alpha, beta, temperature=1.0):
    return ab_divergence_float64(
        softmax64(teacher_logits, temperature),
        softmax64(student_logits, temperature),
        alpha,
        beta,
    )


def _row_mpmath(t_row, s_row, alpha, beta, temperature):
    t = [mpmath.mpf(float(x)) / temperature for x in t_row]
    s = [mpmath.mpf(float(x)) / temperature for x in s_row]
    zt = mpmath.fsum(mpmath.exp(x) for x in t)
    zs = mpmath.fsum(mpmath.exp(x) for x in s)
    p = [mpmath.exp(x) / zt for x in t]
    q = [mpmath.exp(x) / zs for x in s]
    a, b = mpmath.mpf(alpha), mpmath.mpf(beta)
    total = a + b
    terms = []
    for pi, qi in zip(p, q):
        if a == 0 and b == 0:
            terms.append((mpmath.log(pi) - mpmath.log(qi)) ** 2 / 2)
        elif b == 0:
            terms.append((pi**a * mpmath.log(pi**a / qi**a) - pi**a + qi**a) / a**2)
        elif a == 0:
            terms.append((qi**b * mpmath.log(qi**b / pi**b) - qi**b + pi**b) / b**2)
        elif total == 0:
            ratio = (qi / pi) ** a
            terms.append((mpmath.log(ratio) + 1 / ratio - 1) / a**2)
        else:
            terms.append(
                -(pi**a * qi**b - a / total * pi**total - b / total * qi**total)
                / (a * b)
            )
    return float(mpmath.fsum(terms))


def ab_divergence_mpmath(teacher_logits, student_logits, alpha, beta, temperature=1.0):
    """Divergence per row of 2-D logit arrays, with 50-digit arithmetic."""
    with mpmath.workdps(50):
        return np.array(
            [
                _row_mpmath(t, s, alpha, beta, temperature)
                for t, s in zip(np.asarray(teacher_logits), np.asarray(student_logits))
            ]
        )


def numerical_student_gradient(teacher_logits, student_logits, alpha, beta, temperature=1.0, step=1e-5):
    """Central finite differences of the 50-digit divergence w.r.t. student logits."""
    s = np.asarray(student_logits, dtype=np.float64)
    grad = np.zeros_like(s)
    for index in np.ndindex(s.shape):
        plus, minus = s.copy(), s.copy()
        plus[index] += step
        minus[index] -= step
        row = index[:-1]
        t_row = np.asarray(teacher_logits)[row][None]
        f_plus = ab_divergence_mpmath(t_row, plus[row][None], alpha, beta, temperature)[0]
        f_minus = ab_divergence_mpmath(t_row, minus[row][None], alpha, beta, temperature)[0]
        grad[index] = (f_plus - f_minus) / (2 * step)
    return grad
