"""The one error type of the data layer."""


class DatasetError(ValueError):
  """A dataset cannot be loaded: unknown name, missing or corrupt files, empty split.

  The message names the dataset or the file and says what is wrong with it.
  """
