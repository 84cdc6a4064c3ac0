"""A tenant's usage over a window: requests, images, credits and GPU time, by day, backend
or key."""
