"""Processing building blocks, plain Python (no Prefect): a scratch directory that is always removed,
running a tool in it (``scratch``), and DICOM -> NIfTI conversion with dcm2niix (``nifti``)."""
