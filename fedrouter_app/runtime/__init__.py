"""What carries a node's messages: delivery in the simulation runtime, the warm per-node worker and its channel."""
