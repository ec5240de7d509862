"""The comparison's parts: the grid (:mod:`.grid`), cached runs (:mod:`.runs`), ranking,
reports and plots (:mod:`.report`). :mod:`hadfl_jax.compare` puts them together."""
