"""One module per kind of page; each registers its routes on its own ``router``."""
