"""Tests of the benchmark tools in bench/ (the node and network simulators) and the scale-out test they drive."""
