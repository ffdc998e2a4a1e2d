"""Block families. Importing this package registers every family and its presets."""

from nestlearn.models.families import transformer  # noqa: F401
