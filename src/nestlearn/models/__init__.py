"""nestlearn.models"""
