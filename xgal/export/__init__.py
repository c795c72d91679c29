"""The scoring graph's export: a classifier and its Grad-CAM gradient path as one ONNX graph
(`graph`), traced with forward and backward as plain ATen ops (`gradpath`), with decompositions
for the backward ops ONNX cannot carry (`decompositions`)."""

from xgal.export.forward_graph import export_forward_graph
from xgal.export.graph import ScoringGraphExporter, export_scoring_graph

__all__ = ["ScoringGraphExporter", "export_forward_graph", "export_scoring_graph"]
