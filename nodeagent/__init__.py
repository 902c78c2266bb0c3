"""The Hashwork node agent: the daemon volunteers run to take work from the marketplace."""
