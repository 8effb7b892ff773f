"""Randomisation sanity checks: does the map depend on what the model learned?"""
