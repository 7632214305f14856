"""Railyard's services: each folder is one independently started process (`python -m services.<name>`)."""
