"""The two errors of the expression language: the public one, and the one raised inside the sandbox."""


class ExpressionError(ValueError):
    """An expression could not be evaluated; says which one, why, and where."""

    def __init__(self, expression, reason, field=None):
        super().__init__(expression, reason, field)
        self.expression = expression
        self.reason = reason
        self.field = field

    def __str__(self):
        message = f'expression "{self.expression}": {self.reason}'
        if self.field is not None:
            message = f"field '{self.field}': {message}"
        return message


class Refused(Exception):
    """Raised inside the evaluator; becomes the reason of an ExpressionError."""
