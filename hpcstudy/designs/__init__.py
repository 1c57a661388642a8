"""Comparative designs: propensity scores, matching, weighting, balance, people in both arms.

``spec`` holds what a study says (``propensity:``), ``language`` reads it, ``propensity`` fits
the score over partitions, ``matching`` is the global nearest-neighbour step on (score, arm,
person) triples, ``weighting`` the weights, ``balance`` Table 1, SMDs and the preference score,
``apply`` runs the whole design for the partition engine and ``reference`` independently in
pandas for the reference engine. See docs/comparative.md.
"""
