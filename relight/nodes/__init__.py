"""GPU inference nodes as workers see them: discovery, slots, circuit breakers, dispatch."""
