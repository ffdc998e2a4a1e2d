"""nestlearn.train"""
