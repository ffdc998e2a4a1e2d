"""Continual learning experiments: models trained on one distribution after another.

``domains``: tiny models trained from scratch on a stream of text domains (Austen, then
Shakespeare, then State of the Union speeches), with the held-out perplexity of every domain
measured after each phase (see docs/continual.md).
"""

__all__: list[str] = []
