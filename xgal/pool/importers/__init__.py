"""Importers that turn what hospitals have into pools (`xgal pool import ...`).

- `images`: a folder of PNG/JPEG with a CSV of labels and ROI masks or boxes;
- `dicom`: DICOM files with a VinDr-CXR / SIIM-style box CSV (pydicom);
- `brats`: NIfTI volumes in the BraTS layout, sliced into 2-D (nibabel);
- `volumes`: NIfTI, NRRD, MHA volumes from a list, sliced into 2-D with each slice's patient
  (SimpleITK).

`safety` holds what every importer refuses before reading: a file declaring more pixels than
the limit (a decompression bomb), a list path that leaves the list's folder.

Each validates what it reads (dimensions, dtypes, ROI inside the image, unique IDs), shows
progress, and resumes an interrupted import from its last finished shard.
"""
