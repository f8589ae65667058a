from peftkit.cli import main

raise SystemExit(main())
