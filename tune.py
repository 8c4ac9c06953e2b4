"""Ray Tune x Optuna search over FSRF's loss weights and missing-rate curricula.

    python tune.py                       # local Ray, synthetic data, a small search
    python tune.py --help                # every option
    ray submit cluster/<file>.yaml tune.py -- --space tuning/spaces/mosei.yaml ...

Argument parsing lives in :mod:`tuning.cli`; this file only calls it, so that
``ray submit`` (which uploads this one script) runs the installed project.
"""

from tuning.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
