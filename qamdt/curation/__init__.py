"""Dataset curation: from a manifest of songs to a labelled, captioned, selected manifest.

``qamdt curate`` (:func:`~qamdt.curation.job.curate`) composes the manifest stages of
:mod:`mos_predictor` and :mod:`captioning` into one resumable, shardable job and writes a
report. Modules: ``settings`` (:class:`CurationSettings`, kept in ``OUT/curation.json``),
``select`` (the ``--select`` expressions), ``job``, ``report`` and ``cli``. This package
sits with the commands: it may import the labelling and refinement packages.
"""

from qamdt.curation.settings import CurationSettings

__all__ = ["CurationSettings"]
