"""Volunteer nodes: enrolment, credentials, capabilities, heartbeats and reputation."""
