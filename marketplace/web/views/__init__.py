"""The dashboard's pages by topic (accounts, jobs, nodes, network): reads from web.selectors, writes via services."""
