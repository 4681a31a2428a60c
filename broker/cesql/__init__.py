"""CloudEvents SQL Expression Language (CESQL) v1.0.

Compile an expression once, then evaluate it against many events::

    from fmesh.broker.cesql import compile_expression

    expression = compile_expression("type LIKE 'com.shop.%' AND INT(amount) > 100")
    expression.matches({"type": "com.shop.order", "amount": "250", ...})  # True
    result = expression.evaluate(event)  # EvaluationResult(value=..., errors=(...))

Evaluation errors (math, cast, missing attribute, ...) are collected in the
result rather than raised; only :func:`compile_expression` raises, with a
:class:`CesqlParseError`.
"""

from .casting import CesqlType
from .errors import (
    CesqlCastError,
    CesqlError,
    CesqlFunctionEvaluationError,
    CesqlGenericError,
    CesqlMathError,
    CesqlMissingAttributeError,
    CesqlMissingFunctionError,
    CesqlParseError,
)
from .expression import EvaluationResult, Expression, compile_expression

__all__ = [
    "CesqlCastError",
    "CesqlError",
    "CesqlFunctionEvaluationError",
    "CesqlGenericError",
    "CesqlMathError",
    "CesqlMissingAttributeError",
    "CesqlMissingFunctionError",
    "CesqlParseError",
    "CesqlType",
    "EvaluationResult",
    "Expression",
    "compile_expression",
]
