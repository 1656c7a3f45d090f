"""Preference data: records and their views, loaders of the paper's sources, tokenisation."""
