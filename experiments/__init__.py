"""Answered studies: scripts whose results docs quote at a given commit; not maintained, not run by tests."""
