"""A node's side: the client environment, message handling, attacks, task routing."""
