"""Data made here: a simulated survey release with known morphology and simulated volunteers (:mod:`.simulate`,
:mod:`.morphology`, :mod:`.volunteers`), and the Hubble eXtreme Deep Field that scikit-image ships as a one-tile
release (:mod:`.hubble`)."""
