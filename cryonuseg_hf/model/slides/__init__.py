"""Whole-slide images: the nuclei of a slide, streamed in blocks, written in level-0 coordinates.

The data flow, one module each:

1. :mod:`~cryonuseg_hf.model.slides.reader`: an Aperio SVS, Hamamatsu NDPI, Leica SCN, Ventana BIF or pyramidal
   TIFF -> a :class:`~cryonuseg_hf.model.slides.reader.Slide`, read at the model's µm/px.
2. :mod:`~cryonuseg_hf.model.slides.tissue_map`: the tissue mask and an RGB overview at about 4 µm/px, by the rule
   of :mod:`cryonuseg_hf.model.tissue` (the same rule that judges images).
3. :mod:`~cryonuseg_hf.model.slides.blocks`: the slide cut into blocks; each block with tissue is read, labelled
   and keeps the nuclei it owns, so nuclei are neither cut nor duplicated at block edges and memory holds one
   block, not the slide.
4. :mod:`~cryonuseg_hf.model.slides.outputs` (QuPath GeoJSON, CSV, label pyramid, streamed block by block),
   :mod:`~cryonuseg_hf.model.slides.overview` (the overview PNG) and
   :mod:`~cryonuseg_hf.model.slides.pyramid` (pyramidal TIFFs).
5. :mod:`~cryonuseg_hf.model.slides.predict`: :func:`~cryonuseg_hf.model.slides.predict.predict_slide` runs it
   all and writes every output as one all-or-nothing set, with a JSON summary.

Regions (``--roi``) are parsed and tested in :mod:`~cryonuseg_hf.model.slides.roi`. Coordinates follow
:mod:`cryonuseg_hf.data.outlines` (label pixel ``[i, j]`` of level 0 has its centre at ``(x, y) = (j + 1, i + 1)``),
in level-0 pixels of the slide whatever level was read.
"""
