"""Annotation: everything a radiologist touches, torch-free.

- `annotator`: the one `Annotator` protocol the loop talks to, and the request it hands over
  (built lazily, so the simulated annotator pays nothing for the hints);
- `oracle`: the simulation's annotator, reading the answers from a labelled pool;
- `folder`, `layout`, `hints`: the folder hand-off (request.csv, hint pictures, labels.csv);
- `answers`, `datalist`: answers checked and recorded once, and the Decathlon-style export;
- `label_studio`, `label_studio_tasks`, `label_studio_client`: the same hand-off through a Label
  Studio server (the project and its served pictures, the tasks and answers, the connection);
- `report`: a run as one self-contained HTML page; `contact_sheet`: a pool's scans at a glance.

Commands that only record answers or build a report import this part, the pool and the core:
never torch (tests/test_imports.py reads the imports).
"""
