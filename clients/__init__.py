"""Client sides of the methods; importing this package registers them."""

from clients import fedit, fedrouter, local  # noqa: F401
