from postwarden.cli import main

raise SystemExit(main())
