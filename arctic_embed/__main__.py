from arctic_embed.cli import main

raise SystemExit(main())
