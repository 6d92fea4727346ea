"""Functions the Executor tests run on real workers (importable by name: the workers get this folder on PYTHONPATH)."""


class PlannedError(ValueError):
    pass


def square(x):
    return x * x


def fail_on(x, bad):
    if x == bad:
        raise PlannedError("item %r is the planned failure" % (x,))
    return x


def big(n):
    return b"x" * n


def keyword(a, *, b=0):
    return a - b
