"""The torch-free core that the trainer, the scorer, the client and the bench all import.

- `contract`: what a scoring graph promises (input/output names, metadata, pixel scales);
- `acquisition`: uncertainty, misalignment and their combination;
- `ranking`: a scored batch, bounded top-k, class balancing, exact merging, pool-level rescoring;
- `wire`: the mapping between these types and the service's messages (xgal.v1), both ways;
- `masks`: what an ROI mask means (an all-zero mask is no ROI);
- `errors`: the base class of errors a user can fix;
- `durable`: files written so that a kill or a power cut leaves the old or the new one, files
  written once, and locks that a killed process drops;
- `spreadsheet`: CSV cells a spreadsheet shows as text and xgal reads back unchanged.

It imports numpy, the standard library and (in `wire` only) the generated messages: never
torch, onnxruntime or another part of xgal, so a name or a formula lives here once.
"""
