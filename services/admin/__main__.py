from services.admin.main import main

raise SystemExit(main())
