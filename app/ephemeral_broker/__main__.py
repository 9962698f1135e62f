from ephemeral_broker.cli import main

raise SystemExit(main())
