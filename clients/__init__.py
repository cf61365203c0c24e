"""Client sides of the methods; importing this package registers them."""

from clients import fedit, local  # noqa: F401
