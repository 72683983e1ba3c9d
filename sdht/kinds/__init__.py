"""Kinds of entries: each decides how an entry of its kind is validated and merged."""
