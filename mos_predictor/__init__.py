"""MOS prediction: p-MOS labelling of clips and the quality conditions derived from it."""
