"""nestlearn.ops"""
