"""Double reading: a project reads a share of its volumes twice, independently; a reviewer compares the
two readings (per-class Dice and surface distance) and keeps one or merges them. Writes in
``readings.services``, reads in ``readings.selectors``; the cases themselves are ordinary cases
(``Case.reading`` 1 and 2)."""
