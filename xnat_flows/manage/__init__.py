"""Server-side data management (prearchive, resources): plain Python on the XNAT client, no Prefect."""
