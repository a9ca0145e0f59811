"""Neural-network building blocks: Gaussians and PoE, cells, the hierarchy, heads, discriminators."""
