"""``python -m meta_rl``: the ``meta-rl`` command; under ``torchrun`` each rank joins the process
group first (see :func:`meta_rl.launch.main`)."""

from meta_rl.cli import main

raise SystemExit(main())
