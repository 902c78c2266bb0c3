"""The dashboard's pages, by topic: accounts (sign-up, profile, wallet), jobs, nodes and the public network page.

Thin: reads come from `web.selectors`, writes go through services (the jobs app's for jobs, so a job posted here is
exactly a job posted through the API; `web.services` for what only the dashboard writes)."""
