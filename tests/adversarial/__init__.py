"""Attacks played against real components: each shows the harm does not happen and the honest path still works."""
