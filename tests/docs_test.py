"""The docs' examples run: ``docs/extending.md`` is a doctest."""

import doctest

from tests import fixtures


def test_extending_guide_examples_run():
  # Registrations in the guide stay in this test's process (they are new names only).
  result = doctest.testfile(str(fixtures.REPO / 'docs' / 'extending.md'), module_relative=False,
                            optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                            raise_on_error=False, verbose=False)
  assert result.attempted > 20
  assert result.failed == 0, f'{result.failed} of {result.attempted} examples failed'
