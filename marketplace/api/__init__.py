"""Cross-app API helpers: the error shape, pagination, amount fields."""
