"""Server sides of the methods; importing this package registers them."""

from strategies import fedit, local  # noqa: F401
