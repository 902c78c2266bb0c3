"""Blender scene generation and labeled rendering for synthetic datasets (added by the render issue)."""
