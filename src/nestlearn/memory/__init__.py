"""nestlearn.memory"""
