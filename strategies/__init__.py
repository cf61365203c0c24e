"""Server sides of the methods; importing this package registers them."""

from strategies import fedit, fedrouter, local  # noqa: F401
