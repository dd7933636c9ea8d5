from services.health.main import main

raise SystemExit(main())
