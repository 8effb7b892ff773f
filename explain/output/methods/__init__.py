"""Attribution methods. Importing this package registers every method."""
import importlib

from explain.output.methods.base import Explainer, all_methods, compatible_methods, get_method, register

#: one module per method, in the order the UI lists them.
METHOD_MODULES = (
    "integrated_gradients",
    "saliency",
    "input_x_gradient",
    "smoothgrad",
    "gradient_shap",
    "deeplift",
    "deeplift_shap",
    "shap_deep",
    "shap_gradient",
    "occlusion",
    "feature_ablation",
    "grad_cam",
    "layer_integrated_gradients",
)

for _name in METHOD_MODULES:
    importlib.import_module(f"{__name__}.{_name}")

__all__ = ["Explainer", "all_methods", "compatible_methods", "get_method", "register", "METHOD_MODULES"]
