from services.discovery.main import main

raise SystemExit(main())
