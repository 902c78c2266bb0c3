"""Jobs, their tasks, the assignments of task replicas to nodes, and the results nodes return."""
