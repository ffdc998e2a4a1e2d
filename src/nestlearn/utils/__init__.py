"""Helpers with no nestlearn imports at all: the bottom floor every package may use."""
