"""reidkit's methods, one module each: a method's typed recipe section, its training piece or miner, and the
registration that ties them to the recipe (:func:`reidkit.pieces.register_piece`,
:func:`reidkit.sections.register_miner`).  The loss functions and miners themselves are building blocks in
:mod:`reidkit.losses`; :data:`reidkit.sections.BUILTIN_METHODS` lists these modules (imported by name before
any recipe is read, so no method's section can be left unregistered).
"""
