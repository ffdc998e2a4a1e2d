"""nestlearn.eval: scorers. Given a model and data, return numbers; never train (see studies)."""
