"""The raw CryoNuSeg release and other nuclei data: reading, checking, masks, the `datasets` build."""
