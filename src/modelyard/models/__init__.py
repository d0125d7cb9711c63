"""Models: the Predictor protocol, adapters (torch, scikit-learn, ONNX Runtime) and model families."""

from modelyard.models._base import BasePredictor, Predictor

__all__ = ["BasePredictor", "Predictor"]
