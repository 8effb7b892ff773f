"""Attribution methods. Importing this package registers every method."""
from .base import Explainer, all_methods, compatible_methods, get_method, register

__all__ = ["Explainer", "all_methods", "compatible_methods", "get_method", "register"]
