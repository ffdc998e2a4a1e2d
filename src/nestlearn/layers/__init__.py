"""nestlearn.layers"""
