"""The exception types for bad input: the CLI prints the message and exits with code 2.

Raise a subclass of UserError wherever a user can fix the problem (a config key, a missing
dataset, a checkpoint that does not fit); its message is one paragraph that names the
problem and the fix.
"""


class UserError(Exception):
  """A problem the user can fix; the message says how."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work; the message names the key and the fix."""
