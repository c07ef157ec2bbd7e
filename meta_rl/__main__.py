"""``python -m meta_rl``: the ``meta-rl`` command; under ``torchrun`` each rank joins the process
group first (see :func:`meta_rl.distributed.main`)."""

from meta_rl.distributed import main

raise SystemExit(main())
