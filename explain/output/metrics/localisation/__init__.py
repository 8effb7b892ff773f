"""Localisation: does the map point at the object (ground-truth masks)?"""
