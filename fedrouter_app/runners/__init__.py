"""What starts runs on one machine: the Ray simulation, an in-process grid, warm actors, the local SuperLink."""
