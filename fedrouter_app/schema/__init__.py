"""The run configuration's schema: typed sections with help text and value checks, no values (those live in conf/)."""
