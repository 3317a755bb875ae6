"""The CLI's entry function (`vision_jax.main`: parse_flags, then main) run in the test
process, for tests about what the CLI says: no interpreter start-up and no JAX import per
case, so a test can walk dozens of bad inputs. Processes, signals and files are tested
through the real CLI in a subprocess (conftest.run_cli)."""
from __future__ import annotations

import contextlib
import io
import signal
import sys

from absl import flags


def run_main(args: list[str]) -> tuple[int, str]:
  """(exit code, stderr) of `python -m vision_jax.main ARGS`, run in this process."""
  from vision_jax import main  # pylint: disable=g-import-not-at-top
  flags.FLAGS.unparse_flags()
  main._WORKDIR_OVERRIDES.clear()  # pylint: disable=protected-access
  handler, hook, sys_argv = signal.getsignal(signal.SIGTERM), sys.unraisablehook, sys.argv
  argv = ['vision_jax.main', *args]
  sys.argv = argv  # ml_collections finds the --config.key=value flags to define in it.
  err, code = io.StringIO(), 0
  try:
    with contextlib.redirect_stderr(err):
      try:
        main.main(main.parse_flags(argv))
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
  finally:
    signal.signal(signal.SIGTERM, handler)
    sys.unraisablehook, sys.argv = hook, sys_argv
    flags.FLAGS.unparse_flags()
    for name in [n for n in flags.FLAGS if n.startswith('config.')]:
      delattr(flags.FLAGS, name)  # The override flags ml_collections defined for this run.
    # ml_collections loads --config as module 'config_config' and would run the next
    # file into it: a file without get_config() (a JSON or YAML file is Python too) would
    # then find this one's.
    sys.modules.pop('config_config', None)
  return code, err.getvalue()


def one_paragraph(code: int, stderr: str, *needles: str) -> str:
  """The single 'error: ' paragraph of a refused run (exit 2), with every needle in it."""
  assert code == 2, (code, stderr[-3000:])
  errors = [line for line in stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1 and 'Traceback' not in stderr, stderr[-3000:]
  for needle in needles:
    assert needle in errors[0], errors[0]
  return errors[0]
