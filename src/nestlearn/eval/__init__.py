"""nestlearn.eval"""
