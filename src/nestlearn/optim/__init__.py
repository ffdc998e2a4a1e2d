"""nestlearn.optim"""
