"""Robustness: does the map stay put when the input barely moves?"""
