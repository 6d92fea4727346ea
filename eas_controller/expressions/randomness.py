"""The ``random`` name of expressions: four draws, reproducible when the chain sets ``random_seed``.

Seed chains write ``"t0": "(random.random() * 200)"``. Each expression that uses ``random`` gets its own
generator, seeded from the chain's ``random_seed`` and the *scope* of the value (the task's path in the
chain, with its loop indices, and the field), so a value does not depend on the order in which the
controller happens to evaluate tasks: the same chain with the same seed gives the same numbers at
submission and in run-time expansions. Without a seed each generator draws from the operating system's
entropy. Either way a value is evaluated once, when its task is created, and stored with it, so retries
of a task see the value its first attempt saw.
"""

import hashlib
import random as _random

from eas_controller.expressions.access import Namespace
from eas_controller.expressions.errors import Refused
from eas_controller.expressions.limits import MAX_INT_BITS


def _whole(value, label):
    if type(value) not in (int, bool):
        raise Refused(f"random.randint() needs whole numbers, not {type(value).__name__} for {label}")
    if abs(value).bit_length() > MAX_INT_BITS:
        raise Refused(f"random.randint() bound is too large (limit {MAX_INT_BITS} bits)")
    return value


def _number(value, label, function):
    if type(value) not in (int, float, bool):
        raise Refused(f"random.{function}() needs numbers, not {type(value).__name__} for {label}")
    return value


def sandboxed_random(generator):
    """A read-only namespace with random(), uniform(a, b), randint(a, b) and gauss(mu, sigma) of ``generator``."""

    def draw():
        return generator.random()

    def uniform(a, b):
        return generator.uniform(_number(a, "a", "uniform"), _number(b, "b", "uniform"))

    def randint(a, b):
        low, high = _whole(a, "a"), _whole(b, "b")
        if low > high:
            raise Refused(f"random.randint() needs a <= b, not {low} > {high}")
        return generator.randint(low, high)

    def gauss(mu=0.0, sigma=1.0):
        return generator.gauss(_number(mu, "mu", "gauss"), _number(sigma, "sigma", "gauss"))

    return Namespace("random", {"random": draw, "uniform": uniform, "randint": randint, "gauss": gauss})


class RandomStreams:
    """Hands out the generator of one scope; ``seed`` None means fresh entropy for every scope."""

    def __init__(self, seed=None, prefix=""):
        self.seed = seed
        self.prefix = prefix

    def within(self, prefix):
        """The streams of a narrower scope (a task inside the current one)."""
        return RandomStreams(self.seed, f"{self.prefix}/{prefix}" if self.prefix else prefix)

    def for_scope(self, scope):
        if self.seed is None:
            return sandboxed_random(_random.Random())
        digest = hashlib.sha256(f"{self.seed!r}\0{self.prefix}\0{scope}".encode("utf-8", "surrogatepass")).digest()
        return sandboxed_random(_random.Random(int.from_bytes(digest[:16], "big")))


UNSEEDED = RandomStreams()
