from services.proxy.main import main

raise SystemExit(main())
