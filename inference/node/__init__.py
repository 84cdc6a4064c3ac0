"""The GPU node service's parts: settings, engine loading, heartbeat."""
