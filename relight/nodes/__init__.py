"""GPU inference nodes as workers see them: discovery, slots (a worker's hold on a node, in
Redis), circuit breakers, dispatch, the wire format, and the `gpu` backend built on them."""
