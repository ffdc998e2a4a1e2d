"""nestlearn.data"""
