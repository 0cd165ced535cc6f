"""Named benchmark policies: factories ``bench`` runs by default, one module per family.

Each module registers ``("benchmark-policy", name)`` factories that take no arguments and
return an unfitted :class:`~llmdispatch.policies.base.Policy`.
"""
