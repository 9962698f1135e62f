from ephemeral_broker.cli.main import main

raise SystemExit(main())
