"""Complexity: how concentrated is the map?"""
