from meta_rl.cli import main

raise SystemExit(main())
