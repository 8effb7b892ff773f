"""Faithfulness: does the model's output follow the map?"""
